//! The POP3 service's settings, each with its default: the one place a
//! setting of the service is written. `smtp-gate serve` reads them from
//! its config file, whose keys are these fields' names, and from its flags
//! of the same names; it refuses to start on one that `check` refuses.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::{de::Error as _, Deserialize, Deserializer};

use crate::{duration, host::system_host_name, network::parse_network};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Addresses to serve POP3 on. `[::]:110`, the default, is IPv4 and
    /// IPv6 on one socket (IPV6_V6ONLY is cleared on `[::]`).
    #[serde(deserialize_with = "listen_addresses")]
    pub listen: Vec<SocketAddr>,
    /// Addresses to serve POP3 over TLS on from the first octet (RFC
    /// 8314, "implicit TLS"). Default `[::]:995` when a certificate is
    /// configured (`tls_cert`), none otherwise; `[]` serves STLS only.
    #[serde(deserialize_with = "tls_listen_addresses")]
    pub listen_tls: Option<Vec<SocketAddr>>,
    /// PEM file of the certificate chain, the server's own certificate
    /// first. With `tls_key`: STLS (RFC 2595) on `listen`, implicit TLS on
    /// `listen_tls`. Read again when it changes, and on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of `tls_cert`'s certificate. A secret,
    /// as the users file: mode 600, owned by root or the daemon's user.
    pub tls_key: Option<PathBuf>,
    /// Name in the APOP timestamp of the greeting. Default: the system's
    /// host name.
    pub hostname: String,
    /// RFC 1939 section 3: "An autologout timer MUST be of at least 10
    /// minutes' duration." Default and least: 10 minutes.
    #[serde(with = "duration::text")]
    pub idle_timeout: Duration,
    /// A client that reads nothing of a reply for this long is cut (a
    /// client that reads slowly is not: any progress starts it again).
    /// Default 60 s, at least 1 s.
    #[serde(with = "duration::text")]
    pub send_timeout: Duration,
    /// Connections served at once; more are answered `-ERR [SYS/TEMP]`.
    pub max_connections: usize,
    /// Connections from one client network at once (an IPv4 address or an
    /// IPv6 /64 by default: `client_prefix_v4`, `client_prefix_v6`): one
    /// host cannot take every slot and lock everybody else out of POP3
    /// (and so out of SMTP).
    pub max_connections_per_ip: usize,

    // Slots for the people who need them: how long a connection may hold
    // a slot without logging in, and who is served when all are taken.
    /// How long a client has, from its connection, to log in; then it is
    /// cut. RFC 1939 section 3 asks for an autologout timer of at least
    /// 10 minutes only in the TRANSACTION state ("A POP3 server MAY have
    /// an inactivity autologout timer. Such a timer MUST be of at least 10
    /// minutes' duration. The receipt of any command from the client
    /// during that interval should suffice to reset the autologout
    /// timer."); the AUTHORIZATION state it leaves open. A fixed limit,
    /// not an inactivity timer: commands do not extend it, or a client
    /// could hold a slot by sending CAPA forever. Dovecot's login
    /// processes have the same kind of limit (3 minutes,
    /// CLIENT_LOGIN_TIMEOUT_MSECS); a POP3 login takes a client well under
    /// a second, three failed ones with their delays a few seconds.
    #[serde(with = "duration::text")]
    pub login_timeout: Duration,
    /// Time a client has to finish a command line once its first octet
    /// came, in every state; octets trickling in without a line end do not
    /// extend it (Postfix's `smtpd_per_record_deadline` is the same idea).
    /// Not the autologout timer of RFC 1939 (`idle_timeout`), which counts
    /// from the last complete command: real clients send a command line
    /// in one piece.
    #[serde(with = "duration::text")]
    pub line_timeout: Duration,
    /// Prefix length that makes an IPv4 client's network for
    /// `max_connections_per_ip` and for who is cut when the server is
    /// full. 32: each address alone.
    pub client_prefix_v4: u8,
    /// The same for IPv6. 64: the /64 one host or one subscriber line
    /// usually gets, in which it can pick any number of addresses.
    pub client_prefix_v6: u8,
    /// Every failed login is answered after this long.
    #[serde(with = "duration::text")]
    pub login_failure_delay: Duration,
    /// Failed logins after which the connection is closed. Not a key of
    /// the config file.
    #[serde(skip)]
    pub max_login_failures: u32,
    /// How long running sessions may go on after shutdown begins.
    #[serde(with = "duration::text")]
    pub shutdown_grace: Duration,
    /// APOP (RFC 1939 section 7) is offered (the greeting's timestamp)
    /// and taken. It sends no password, but its MD5 digest over a
    /// challenge seen on the wire can be attacked offline, and it needs
    /// the password stored as plaintext: an operator whose clients all
    /// use TLS turns it off. Default: on.
    pub apop: bool,

    // Load balancers: listeners whose connections come through a proxy
    // that tells the real client's address in a PROXY header (HAProxy's
    // proxy-protocol.txt, v1 or v2), as Dovecot's `haproxy_trusted_networks`
    // and Postfix's `smtpd_upstream_proxy_protocol` take it.
    /// Listeners (each also in `listen` or `listen_tls`) behind a load
    /// balancer: every connection must come from `proxy_trusted_networks`
    /// and start with a PROXY header (before the TLS handshake on an
    /// implicit-TLS listener), and the client it names is the client (its grant,
    /// its connection slot, its failures, whether it is on this host).
    #[serde(deserialize_with = "listen_addresses")]
    pub proxy_listen: Vec<SocketAddr>,
    /// Where load balancers connect from; required with `proxy_listen`.
    /// A connection to a proxied listener from anywhere else is closed.
    #[serde(deserialize_with = "networks")]
    pub proxy_trusted_networks: Vec<IpNet>,
    /// How long a load balancer has to send the whole PROXY header;
    /// then the connection is closed. Default 3 s (Dovecot's
    /// `haproxy_timeout`), at most 1 min.
    #[serde(with = "duration::text")]
    pub proxy_timeout: Duration,
}

/// The longest `login_failure_delay`.
const MAX_LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(60);
/// The longest `proxy_timeout`: a proxy sends its header with the
/// connection's first octets.
const MAX_PROXY_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `shutdown_grace`.
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);
/// RFC 1939 section 3 (see `ServerConfig::idle_timeout`).
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The most connections the service takes at once, and from one network:
/// 2^61 - 1 (tokio's semaphore bound, which it once used; the open-file
/// limit is far lower in practice, see `server::open_files`).
pub const MAX_CONNECTIONS: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// Below this, a client on a slow or lossy link (a retransmission takes a
/// second or more) would be cut while it is still reading.
pub const MIN_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Bounds of `login_timeout` and `line_timeout`: under a second a slow
/// link could not make it, over an hour the limit protects nothing.
const MIN_CLIENT_TIME_LIMIT: Duration = Duration::from_secs(1);
const MAX_CLIENT_TIME_LIMIT: Duration = Duration::from_secs(3600);

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 110))],
            listen_tls: None,
            tls_cert: None,
            tls_key: None,
            hostname: system_host_name().to_string(),
            idle_timeout: MIN_IDLE_TIMEOUT,
            send_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_ip: 50,
            login_timeout: Duration::from_secs(60),
            line_timeout: Duration::from_secs(30),
            client_prefix_v4: 32,
            client_prefix_v6: 64,
            login_failure_delay: Duration::from_secs(2),
            max_login_failures: 3,
            shutdown_grace: Duration::from_secs(10),
            apop: true,
            proxy_listen: Vec::new(),
            proxy_trusted_networks: Vec::new(),
            proxy_timeout: Duration::from_secs(3),
        }
    }
}

/// Where implicit TLS is served when a certificate is configured and
/// `listen_tls` is not given (RFC 8314 section 7.1: port 995).
pub const DEFAULT_LISTEN_TLS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 995);

/// A setting the service cannot run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSetting {
    /// The key (the field's name).
    pub key: &'static str,
    pub problem: String,
}

impl fmt::Display for BadSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.problem)
    }
}

impl std::error::Error for BadSetting {}

impl ServerConfig {
    /// Whether a certificate is configured (`check` holds the key to it).
    pub fn tls_configured(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The implicit-TLS listen addresses: `listen_tls`, or its default.
    pub fn tls_listen(&self) -> Vec<SocketAddr> {
        match &self.listen_tls {
            Some(addrs) => addrs.clone(),
            None if self.tls_configured() => vec![DEFAULT_LISTEN_TLS],
            None => Vec::new(),
        }
    }

    /// Refuses what the service cannot run with, naming the key.
    pub fn check(&self) -> Result<(), BadSetting> {
        let bad = |key, problem: &str| {
            Err(BadSetting {
                key,
                problem: problem.to_string(),
            })
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return bad(
                    "tls_key",
                    "missing: `tls_cert` needs the key of its certificate",
                )
            }
            (None, Some(_)) => {
                return bad(
                    "tls_cert",
                    "missing: `tls_key` needs the certificate of its key",
                )
            }
            _ => {}
        }
        let implicit_tls = self.listen_tls.as_deref().unwrap_or_default();
        if !implicit_tls.is_empty() && self.tls_cert.is_none() {
            return bad(
                "listen_tls",
                "TLS needs a certificate: give `tls_cert` and `tls_key`",
            );
        }
        // Port 0 (any free port, as tests bind) is never the same port.
        let same_port = |addr: &&SocketAddr| addr.port() != 0 && self.listen.contains(addr);
        if let Some(both) = implicit_tls.iter().find(same_port) {
            return bad(
                "listen_tls",
                &format!("{both} is in `listen` too: one port speaks either TLS or not"),
            );
        }
        let hostname = &self.hostname;
        if hostname.is_empty() || hostname.chars().any(|c| c.is_whitespace() || c == '>') {
            let whose = if hostname == system_host_name() {
                "the system's host name "
            } else {
                ""
            };
            return bad(
                "hostname",
                &format!("{whose}`{hostname}` cannot go into an APOP timestamp"),
            );
        }
        // Every failed login waits this long, and so does a shutdown for
        // a session in the wait: Dovecot's auth_failure_delay is 2 s.
        if self.login_failure_delay > MAX_LOGIN_FAILURE_DELAY {
            return bad("login_failure_delay", "at most 1m");
        }
        // A grace longer than a service manager waits (the unit's
        // TimeoutStopSec) is never given; an hour is far past any.
        if self.shutdown_grace > MAX_SHUTDOWN_GRACE {
            return bad("shutdown_grace", "at most 1h");
        }
        if self.idle_timeout < MIN_IDLE_TIMEOUT {
            return bad("idle_timeout", "RFC 1939 requires at least 10 minutes");
        }
        if self.send_timeout < MIN_SEND_TIMEOUT {
            return bad("send_timeout", "must be at least 1s");
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
        ] {
            if !(1..=MAX_CONNECTIONS).contains(&value) {
                return bad(key, &format!("must be 1 to {MAX_CONNECTIONS}, not {value}"));
            }
        }
        for (key, limit) in [
            ("login_timeout", self.login_timeout),
            ("line_timeout", self.line_timeout),
        ] {
            if !(MIN_CLIENT_TIME_LIMIT..=MAX_CLIENT_TIME_LIMIT).contains(&limit) {
                return bad(key, "must be from 1s to 1h");
            }
        }
        if !(1..=32).contains(&self.client_prefix_v4) {
            return bad("client_prefix_v4", "must be from 1 to 32");
        }
        if !(1..=128).contains(&self.client_prefix_v6) {
            return bad("client_prefix_v6", "must be from 1 to 128");
        }
        self.check_proxy()
    }

    /// The proxied listeners are listeners, and someone may send to them.
    fn check_proxy(&self) -> Result<(), BadSetting> {
        let bad = |key, problem: String| Err(BadSetting { key, problem });
        let served = self.tls_listen();
        if let Some(stray) = self
            .proxy_listen
            .iter()
            .find(|a| !self.listen.contains(a) && !served.contains(a))
        {
            return bad(
                "proxy_listen",
                format!("{stray} is not one of the addresses of `listen` or `listen_tls`"),
            );
        }
        if !self.proxy_listen.is_empty() && self.proxy_trusted_networks.is_empty() {
            return bad(
                "proxy_trusted_networks",
                "needed with `proxy_listen`: the networks the load balancers connect from"
                    .to_string(),
            );
        }
        if self.proxy_timeout > MAX_PROXY_TIMEOUT {
            return bad("proxy_timeout", "at most 1m".into());
        }
        Ok(())
    }

    /// Whether connections to `listener` (an address of `listen` or
    /// `listen_tls`) come
    /// through a load balancer.
    pub fn is_proxied(&self, listener: SocketAddr) -> bool {
        self.proxy_listen.contains(&listener)
    }
}

/// Socket addresses, with a hint for the usual mistake (a name or a bare
/// address instead of ADDRESS:PORT).
fn listen_addresses<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| {
            text.parse().map_err(|_| {
                D::Error::custom(format!("`{text}` is not ADDRESS:PORT (e.g. \"[::]:110\")"))
            })
        })
        .collect()
}

/// Networks in CIDR notation (`network::parse_network`).
fn networks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_network(text).map_err(D::Error::custom))
        .collect()
}

/// [`listen_addresses`], for a key that may be left out.
fn tls_listen_addresses<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<SocketAddr>>, D::Error> {
    listen_addresses(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are the limits the README and deploy/smtp-gate.toml
    /// state (tests/deploy.rs holds the example file to these defaults;
    /// pop3's server tests hit the per-address limit as shipped).
    #[test]
    fn defaults_are_the_documented_limits() {
        let config = ServerConfig::default();
        assert_eq!(config.listen, vec![SocketAddr::from(([0u16; 8], 110))]);
        assert_eq!(config.idle_timeout, Duration::from_secs(10 * 60));
        assert_eq!(config.max_connections, 1024);
        assert_eq!(config.max_connections_per_ip, 50);
        assert_eq!(config.login_failure_delay, Duration::from_secs(2));
        assert_eq!(config.max_login_failures, 3, "the third failure closes");
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.login_timeout, Duration::from_secs(60));
        assert_eq!(config.line_timeout, Duration::from_secs(30));
        assert_eq!((config.client_prefix_v4, config.client_prefix_v6), (32, 64));
        assert!(config.proxy_listen.is_empty(), "no listener is proxied");
        assert_eq!(config.proxy_timeout, Duration::from_secs(3));
    }

    #[test]
    fn proxied_listeners_are_listeners_with_trusted_networks() {
        let read = |text: &str| toml::from_str::<ServerConfig>(text).unwrap();
        let key = |text: &str| read(text).check().map_err(|e| e.key);
        let listen = "listen = [\"[::]:110\", \"127.0.0.1:1110\"]\n";
        let ok = read(&format!(
            "{listen}proxy_listen = [\"127.0.0.1:1110\"]\n\
             proxy_trusted_networks = [\"10.0.0.0/8\", \"2001:db8::1\"]"
        ));
        ok.check().unwrap();
        assert!(ok.is_proxied("127.0.0.1:1110".parse().unwrap()));
        assert!(!ok.is_proxied("[::]:110".parse().unwrap()));
        assert_eq!(
            key(&format!(
                "{listen}proxy_listen = [\"127.0.0.1:110\"]\nproxy_trusted_networks = [\"10.0.0.1\"]"
            )),
            Err("proxy_listen"),
            "not a listener"
        );
        let behind_tls = read(&format!(
            "{listen}tls_cert = \"/c\"\ntls_key = \"/k\"\nlisten_tls = [\"10.0.0.5:995\"]\n\
             proxy_listen = [\"10.0.0.5:995\"]\nproxy_trusted_networks = [\"10.0.0.2\"]"
        ));
        behind_tls.check().unwrap();
        assert!(behind_tls.is_proxied("10.0.0.5:995".parse().unwrap()));
        assert_eq!(
            key(&format!(
                "{listen}listen_tls = []\ntls_cert = \"/c\"\ntls_key = \"/k\"\n\
                 proxy_listen = [\"[::]:995\"]\nproxy_trusted_networks = [\"10.0.0.2\"]"
            )),
            Err("proxy_listen"),
            "not a listener: no implicit TLS"
        );
        assert_eq!(
            key(&format!("{listen}proxy_listen = [\"127.0.0.1:1110\"]")),
            Err("proxy_trusted_networks")
        );
        assert_eq!(key("proxy_timeout = \"61s\""), Err("proxy_timeout"));
        assert_eq!(key("proxy_timeout = \"1m\""), Ok(()));
        let e = toml::from_str::<ServerConfig>("proxy_trusted_networks = [\"10.1.2.3/8\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("host bits"), "{e}");
    }

    #[test]
    fn defaults_pass_and_bounds_are_named() {
        ServerConfig::default().check().unwrap();
        let key = |config: ServerConfig| config.check().unwrap_err().key;
        let with = |change: fn(&mut ServerConfig)| {
            let mut config = ServerConfig::default();
            change(&mut config);
            config
        };
        assert_eq!(
            key(with(|c| c.max_connections = usize::MAX >> 2)),
            "max_connections"
        );
        assert_eq!(key(with(|c| c.max_connections = 0)), "max_connections");
        assert_eq!(
            key(with(|c| c.max_connections_per_ip = usize::MAX)),
            "max_connections_per_ip"
        );
        with(|c| c.max_connections = MAX_CONNECTIONS)
            .check()
            .unwrap();
        assert_eq!(
            key(with(|c| c.idle_timeout = Duration::from_secs(599))),
            "idle_timeout"
        );
        assert_eq!(
            key(with(|c| c.send_timeout = Duration::from_millis(999))),
            "send_timeout"
        );
        // The bounds themselves are allowed.
        with(|c| c.send_timeout = MIN_SEND_TIMEOUT).check().unwrap();
        with(|c| c.idle_timeout = MIN_IDLE_TIMEOUT).check().unwrap();
        assert_eq!(key(with(|c| c.hostname = "a b".into())), "hostname");
        let spaced = with(|c| c.hostname = "a b".into()).check().unwrap_err();
        assert!(
            !spaced.problem.contains("system"),
            "a name given in the configuration is not the system's: {spaced}"
        );
        // No POP3 listener at all is a daemon serving only the mail
        // servers' hooks: smtp-gate serve's own check decides.
        with(|c| c.listen.clear()).check().unwrap();
        // The bound itself is allowed, one more is not.
        with(|c| c.max_connections = MAX_CONNECTIONS)
            .check()
            .unwrap();
        assert_eq!(
            key(with(|c| c.max_connections = MAX_CONNECTIONS + 1)),
            "max_connections"
        );
    }

    /// The certificate and its key come together, implicit TLS needs
    /// them, and 995 is served by default once they are there.
    #[test]
    fn tls_keys_come_in_pairs_and_listen_tls_needs_them() {
        let read = |text: &str| toml::from_str::<ServerConfig>(text).unwrap();
        let key = |text: &str| read(text).check().unwrap_err().key;
        let none = read("");
        none.check().unwrap();
        assert!(!none.tls_configured());
        assert_eq!(none.tls_listen(), Vec::<SocketAddr>::new());
        assert_eq!(key("tls_cert = \"/c.pem\""), "tls_key");
        assert_eq!(key("tls_key = \"/k.pem\""), "tls_cert");
        assert_eq!(key("listen_tls = [\"[::]:995\"]"), "listen_tls");
        read("listen_tls = []").check().unwrap();
        let pair = "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n";
        let with_pair = read(pair);
        with_pair.check().unwrap();
        assert_eq!(with_pair.tls_listen(), [DEFAULT_LISTEN_TLS]);
        assert_eq!(DEFAULT_LISTEN_TLS.to_string(), "[::]:995");
        let stls_only = read(&format!("{pair}listen_tls = []"));
        assert_eq!(stls_only.tls_listen(), Vec::<SocketAddr>::new());
        let own = read(&format!("{pair}listen_tls = [\"127.0.0.1:1995\"]"));
        assert_eq!(own.tls_listen(), ["127.0.0.1:1995".parse().unwrap()]);
        let twice = format!("{pair}listen = [\"[::]:110\"]\nlisten_tls = [\"[::]:110\"]");
        let e = read(&twice).check().unwrap_err();
        assert_eq!(e.key, "listen_tls");
        assert!(e.problem.contains("[::]:110 is in `listen` too"), "{e}");
        let err = toml::from_str::<ServerConfig>("listen_tls = [\"995\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not ADDRESS:PORT"), "{err}");
    }

    /// A century of delay or grace would let a failed login, or a
    /// shutdown, wait for ever.
    #[test]
    fn delays_that_would_hold_a_shutdown_are_bounded() {
        let check = |change: fn(&mut ServerConfig)| {
            let mut config = ServerConfig::default();
            change(&mut config);
            config.check().map_err(|e| e.key)
        };
        assert_eq!(
            check(|c| c.login_failure_delay = Duration::from_secs(60)),
            Ok(())
        );
        assert_eq!(
            check(|c| c.login_failure_delay = Duration::from_secs(61)),
            Err("login_failure_delay")
        );
        assert_eq!(
            check(|c| c.shutdown_grace = Duration::from_secs(3600)),
            Ok(())
        );
        assert_eq!(
            check(|c| c.shutdown_grace = Duration::from_secs(3601)),
            Err("shutdown_grace")
        );
    }

    #[test]
    fn listen_addresses_are_read_as_given() {
        let config: ServerConfig =
            toml::from_str("listen = [\"127.0.0.1:1110\", \"[::1]:995\"]").unwrap();
        assert_eq!(
            config.listen,
            vec![
                SocketAddr::from(([127, 0, 0, 1], 1110)),
                SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 995)),
            ]
        );
        let err = toml::from_str::<ServerConfig>("listen = [\"mail.example.org\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not ADDRESS:PORT"), "{err}");
    }

    #[test]
    fn slot_limits_are_bounded() {
        let key = |config: ServerConfig| config.check().unwrap_err().key;
        let with = |change: fn(&mut ServerConfig)| {
            let mut config = ServerConfig::default();
            change(&mut config);
            config
        };
        for (name, bad) in [
            (
                "login_timeout",
                with(|c| c.login_timeout = Duration::from_millis(999)),
            ),
            (
                "login_timeout",
                with(|c| c.login_timeout = Duration::from_secs(3601)),
            ),
            (
                "line_timeout",
                with(|c| c.line_timeout = Duration::from_millis(999)),
            ),
            (
                "line_timeout",
                with(|c| c.line_timeout = Duration::from_secs(3601)),
            ),
            ("client_prefix_v4", with(|c| c.client_prefix_v4 = 0)),
            ("client_prefix_v4", with(|c| c.client_prefix_v4 = 33)),
            ("client_prefix_v6", with(|c| c.client_prefix_v6 = 0)),
            ("client_prefix_v6", with(|c| c.client_prefix_v6 = 129)),
        ] {
            assert_eq!(key(bad), name);
        }
        let edges = with(|c| {
            c.login_timeout = Duration::from_secs(1);
            c.line_timeout = Duration::from_secs(3600);
            c.client_prefix_v4 = 1;
            c.client_prefix_v6 = 128;
        });
        edges.check().unwrap();
    }
}
