//! The command line, as clap reads it. `smtp-gate serve`'s flags are the
//! keys of its config file (serve/config.rs), each under the key's name
//! with `-` for `_`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use pop3::duration::{self, parse_duration};
use serde::Serialize;

use crate::policy::listen::PolicyAddr;
use crate::{
    addr::{parse_addr, Cidr, Dest},
    bus::config::BusUrl,
    gate::{pins::DEFAULT_PIN_DIR, AttachMode},
    keys::KeyError,
};

#[derive(Parser, Debug)]
#[command(
    name = "smtp-gate",
    version,
    about = "POP-before-SMTP enforced in the kernel: an XDP/TC gate that drops SMTP \
             connection attempts from addresses that have not logged in to POP3 recently"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct PinDirArg {
    /// bpffs directory holding the gate's maps and links.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR, global = true)]
    pub pin_dir: PathBuf,
}

// Parsed once per run: the size of `Serve` (every flag of the daemon)
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the gate to an interface (or update its settings if attached)
    /// and exit; the gate stays until `detach`.
    Attach(AttachArgs),
    /// Remove the gate from an interface, with its pins.
    Detach(DetachArgs),
    /// Let an address through, from now on, for the window (or --for).
    Grant(GrantArgs),
    /// Take an address's grant away.
    Revoke(RevokeArgs),
    /// Show the grants: address, age, time left.
    List(ListArgs),
    /// Show the per-verdict packet counters.
    Stats(StatsArgs),
    /// Manage the networks that are always let through.
    Exempt(ExemptArgs),
    /// Manage the bans: sources (IPv6: networks) shut out of the login and
    /// gated ports.
    Ban(BanArgs),
    /// Show or change window, ports, deny mode and destination scope of the
    /// running gate.
    Settings(SettingsArgs),
    /// Run the daemon: attach (or adopt) the gate and serve POP3; every
    /// successful login opens the gate for the client's address.
    Serve(ServeArgs),
    /// Run the grant bus's edge agent: attach (or adopt) the gate and write
    /// into it every grant (and revoke) the POP3 hosts publish on the bus.
    Agent(AgentArgs),
    /// The grant bus: what this host's edge agent is doing.
    Bus(BusStatusArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyArg {
    /// Drop the SYN silently.
    Drop,
    /// Answer with a TCP RST: the client sees "connection refused" at once.
    Reset,
    /// Let everything through but count what would be denied.
    Monitor,
}

/// Gate settings shared by `attach`, `settings` and `serve`.
#[derive(Args, Debug, Clone, Default, Serialize)]
pub struct GateSettingsArgs {
    /// How long a grant lasts (e.g. 900, 15m, 1h). Default 15m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub window: Option<Duration>,
    /// Destination ports to gate, comma separated, up to 8. Default 25.
    #[arg(long, value_name = "PORTS", value_delimiter = ',', num_args = 1..)]
    pub ports: Option<Vec<u16>>,
    /// What to do with a SYN that has no grant. Default drop.
    #[arg(long, value_enum, value_name = "MODE")]
    pub deny: Option<DenyArg>,
    /// Denial log lines per second per CPU (0 turns the log off). Default 5.
    #[arg(long, value_name = "N")]
    pub log_rate: Option<u32>,
    /// Gate only SYNs to this destination network (repeatable), e.g. the
    /// submission address, so that an MX address on the same host keeps
    /// receiving mail. Given at all, the list replaces the set; `all`
    /// gates every destination again (the default).
    #[arg(long, value_name = "CIDR|all")]
    pub dest: Vec<Dest>,
    /// Login ports a banned source is shut out of besides the gated ports,
    /// comma separated, up to 8 (`ban_ports = []` in a config file: the
    /// gated ports only). Default 110,995,143,993.
    #[arg(long, value_name = "PORTS", value_delimiter = ',', num_args = 1..)]
    pub ban_ports: Option<Vec<u16>>,
    /// Prefix length of the IPv6 network a ban covers. Default 64.
    #[arg(long, value_name = "BITS")]
    pub ban_prefix_v6: Option<u8>,
}

/// The flags, but the pin directory, are the keys of an `AttachRequest`.
#[derive(Args, Debug, Serialize)]
pub struct AttachArgs {
    /// Interface to gate (the one mail clients come in on).
    #[arg(long, value_name = "IF")]
    pub iface: String,
    #[command(flatten)]
    #[serde(flatten)]
    pub attachment: AttachmentArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub settings: GateSettingsArgs,
    #[command(flatten)]
    #[serde(skip)]
    pub pins: PinDirArg,
}

/// How the gate is attached, shared by `attach` and `serve`.
#[derive(Args, Debug, Serialize)]
pub struct AttachmentArgs {
    /// Where to attach: native XDP, generic XDP, or TC ingress. Default:
    /// the mode the interface already has, else xdp.
    #[arg(long, value_enum)]
    pub mode: Option<AttachMode>,
    /// A network always let through (repeatable). Given at all, the list
    /// replaces the exempt set; not given, the set is left as it is.
    #[arg(long, value_name = "CIDR")]
    pub exempt: Vec<Cidr>,
    /// Grants each map (IPv4, IPv6) holds without evicting any. Only used
    /// when the grant maps are created. Default 262144.
    #[arg(long, value_name = "N")]
    pub capacity: Option<u32>,
    /// Pin even on a bpffs that only this process's mount namespace has
    /// (it would have to mount one under `ip netns exec`, say): the gate
    /// then ends with the process. Refused without this flag.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_private_bpffs: bool,
}

/// The grant bus's engine and how to talk to it (bus/config.rs
/// `BusKeys`): the flags `serve`, `grant`, `revoke` (as publishers) and
/// `agent` (the edge) share, and keys of their config files.
#[derive(Args, Debug, Clone, Default, Serialize)]
pub struct BusLinkArgs {
    /// The grant bus's engine, Redis or Valkey (serve, grant and revoke
    /// publish every grant to it, agent follows it):
    /// redis://[USER@]HOST[:PORT][/DB], rediss://... for TLS,
    /// redis+unix:///PATH. No password here (every user sees a command
    /// line): --bus-password-file, or the URL in the config file. Off by
    /// default; agent needs it.
    #[arg(long, value_name = "URL", value_parser = BusUrlParser)]
    pub bus: Option<BusUrl>,
    /// File holding the engine's password (of the URL's user). Mode 600.
    #[arg(long, value_name = "FILE")]
    pub bus_password_file: Option<PathBuf>,
    /// Put before every key in the engine, so that several gates share
    /// one. Default smtp-gate:.
    #[arg(long, value_name = "PREFIX")]
    pub bus_prefix: Option<String>,
    /// How long the engine may take to answer: a login's +OK waits this
    /// long for its publication at most; agent waits this long (at least
    /// 1s) for an answer, and past its blocking read (5s). Default 250ms.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub bus_timeout: Option<Duration>,
}

impl BusLinkArgs {
    /// Refuses a `--bus` URL with a password in it, naming the flag (and
    /// not showing the password).
    pub fn refuse_password(&self) -> Result<(), KeyError> {
        match &self.bus {
            Some(url) if url.has_password() => Err(KeyError::of(
                "bus",
                format!(
                    "{url} carries a password, which every user of the host sees on a command \
                     line: give it in bus_password_file, or the URL in the config file"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// `--bus`'s parser. clap's own quotes the value it refuses ("invalid
/// value '...'"), a password written wrongly included: this one says
/// only what [`BusUrl`]'s parser says, which masks it.
#[derive(Clone, Copy, Debug)]
pub struct BusUrlParser;

impl clap::builder::TypedValueParser for BusUrlParser {
    type Value = BusUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<BusUrl, clap::Error> {
        let flag = arg.map_or_else(|| "--bus".to_owned(), ToString::to_string);
        let refused = |problem: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{flag}: {problem}\n"),
            )
            .with_cmd(cmd)
        };
        value
            .to_str()
            .ok_or_else(|| refused("not UTF-8 (a URL is printable ASCII)"))?
            .parse()
            .map_err(|problem: String| refused(&problem))
    }
}

/// The grant bus as a publisher sees it (`serve`, `grant`, `revoke`):
/// the engine, and what goes into the stream.
#[derive(Args, Debug, Clone, Default, Serialize)]
pub struct BusArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub link: BusLinkArgs,
    /// Entries the events stream keeps (about). Default 100000.
    #[arg(long, value_name = "N")]
    pub bus_stream_length: Option<u64>,
    /// This host's name in what it publishes. Default: the host name.
    #[arg(long, value_name = "NAME")]
    pub bus_origin: Option<String>,
}

impl BusArgs {
    /// [`BusLinkArgs::refuse_password`].
    pub fn refuse_password(&self) -> Result<(), KeyError> {
        self.link.refuse_password()
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["iface", "all"])))]
pub struct DetachArgs {
    /// The interface to take the gate off.
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// Take the gate off every interface linked in the pin directory, and
    /// remove its maps; a directory without a gate is no error. Removing
    /// the Debian package runs it.
    #[arg(long)]
    pub all: bool,
    /// Keep the grant and ban maps pinned, so a later attach carries on
    /// with them (a reinstall neither cuts the users off nor frees a
    /// banned guesser).
    #[arg(long)]
    pub keep_grants: bool,
    #[command(flatten)]
    pub pins: PinDirArg,
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// IPv4 or IPv6 address (::ffff:a.b.c.d counts as a.b.c.d).
    #[arg(value_parser = parse_addr)]
    pub addr: std::net::IpAddr,
    /// Lifetime of this grant instead of the window (e.g. 1h).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub lifetime: Option<Duration>,
    #[command(flatten)]
    pub bus: BusCommandArgs,
    #[command(flatten)]
    pub pins: PinDirArg,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[arg(value_parser = parse_addr)]
    pub addr: std::net::IpAddr,
    #[command(flatten)]
    pub bus: BusCommandArgs,
    #[command(flatten)]
    pub pins: PinDirArg,
}

/// Where `grant` and `revoke` find the grant bus: `serve`'s config file
/// (its bus keys, and whether this host has a gate: `iface`), and the
/// bus flags, which win.
#[derive(Args, Debug, Clone, Default)]
pub struct BusCommandArgs {
    /// `smtp-gate serve`'s config file: publish on its bus too.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub keys: BusArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Include expired grants (marked as such).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub pins: PinDirArg,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print the counters, grants and bans in Prometheus's text format
    /// (node-exporter's textfile collector), as a daemon's metrics page
    /// shows them.
    #[arg(long, conflicts_with = "json")]
    pub prometheus: bool,
    #[command(flatten)]
    pub pins: PinDirArg,
}

#[derive(Args, Debug)]
pub struct ExemptArgs {
    #[command(subcommand)]
    pub action: ExemptAction,
    #[command(flatten)]
    pub pins: PinDirArg,
}

#[derive(Subcommand, Debug)]
pub enum ExemptAction {
    /// Always let this network through.
    Add { cidr: Cidr },
    /// Stop exempting this network.
    Del { cidr: Cidr },
    /// Show the exempt networks.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct BanArgs {
    #[command(subcommand)]
    pub action: BanAction,
    #[command(flatten)]
    pub pins: PinDirArg,
}

#[derive(Subcommand, Debug)]
pub enum BanAction {
    /// Ban an address (IPv6: its network of the gate's ban prefix) from
    /// now on; one already banned gets the new end. Exempt addresses
    /// are refused.
    Add {
        #[arg(value_parser = parse_addr)]
        addr: std::net::IpAddr,
        /// How long the ban lasts (e.g. 1h).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, default_value = "15m")]
        length: Duration,
    },
    /// Lift the ban of an address's network (and forget its count).
    Del {
        #[arg(value_parser = parse_addr)]
        addr: std::net::IpAddr,
    },
    /// Show the bans: network, time left, ban number in a row.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Include ended bans (kept for their count), marked as such.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
pub struct SettingsArgs {
    #[command(flatten)]
    pub settings: GateSettingsArgs,
    /// Print JSON instead of text (when only showing).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pins: PinDirArg,
}

/// Every flag is also a key of the `--config` file (with `_` for `-`);
/// flags win. A flag not given, and only that, is absent from the
/// serialised form (`None`, `false`, an empty list), which serve/config.rs
/// lays over the file.
#[derive(Args, Debug, Serialize)]
pub struct ServeArgs {
    /// TOML file with the settings below as keys.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to serve POP3 on (repeatable). Default [::]:110 (dual stack).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Address to serve POP3 over TLS on from the first octet (RFC 8314,
    /// repeatable). Default [::]:995 with --tls-cert, none without.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen_tls: Vec<std::net::SocketAddr>,
    /// PEM file of the certificate chain, the server's own first (with
    /// --tls-key): implicit TLS on --listen-tls, STLS on --listen.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key. Mode 600.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Dovecot-style passwd-file: user:{SCHEME}secret[:...]. Mode 600.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Directory holding one Maildir per user: <mail-root>/<user>/{cur,new,tmp}.
    #[arg(long, value_name = "DIR")]
    pub mail_root: Option<PathBuf>,
    /// Host name in the APOP timestamp of the greeting. Default: the system's.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Interface to gate. Without one (and with --bus), the host has no
    /// gate: its logins are published on the bus only.
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub attachment: AttachmentArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub settings: GateSettingsArgs,
    /// bpffs directory of the gate. Default /sys/fs/bpf/smtp-gate.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Close a connection idle this long (at least 10m, RFC 1939). Default 10m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub idle_timeout: Option<Duration>,
    /// Cut a client that reads nothing of a reply this long (at least 1s). Default 60s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub send_timeout: Option<Duration>,
    /// Connections served at once; more are refused with -ERR [SYS/TEMP]. Default 1024.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections from one client network at once (see --client-prefix-v4
    /// and --client-prefix-v6). Default 50.
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Time a client has from connecting to logging in (1s to 1h). Default 60s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub login_timeout: Option<Duration>,
    /// Time a client has to finish a command line it began (1s to 1h).
    /// Default 30s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub line_timeout: Option<Duration>,
    /// Prefix length of an IPv4 client's network, for the per-network
    /// limit and for who gives up a slot when all are taken. Default 32.
    #[arg(long, value_name = "BITS")]
    pub client_prefix_v4: Option<u8>,
    /// Prefix length of an IPv6 client's network. Default 64.
    #[arg(long, value_name = "BITS")]
    pub client_prefix_v6: Option<u8>,
    /// Delay before each failed login is answered. Default 2s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub login_failure_delay: Option<Duration>,
    /// On SIGTERM, how long sessions may finish. Default 10s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub shutdown_grace: Option<Duration>,
    /// Offer and take APOP (true or false). Default true.
    #[arg(long, value_name = "BOOL")]
    pub apop: Option<bool>,
    /// A --listen address behind a load balancer (repeatable): its
    /// connections must come from --proxy-trusted-networks and start with
    /// a PROXY header (v1 or v2) naming the real client.
    #[arg(long, value_name = "ADDR:PORT")]
    pub proxy_listen: Vec<std::net::SocketAddr>,
    /// A network load balancers connect from (repeatable); needed with
    /// --proxy-listen.
    #[arg(long, value_name = "CIDR")]
    pub proxy_trusted_networks: Vec<Cidr>,
    /// Time a load balancer has to send its PROXY header (at most 1m).
    /// Default 3s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub proxy_timeout: Option<Duration>,
    /// Failed logins of a client network (an IPv4 address, an IPv6
    /// network of --ban-prefix-v6) within --ban-failure-window that ban
    /// it at the login and gated ports; 0 turns bans off. Default 10.
    #[arg(long, value_name = "N")]
    pub ban_failures: Option<u32>,
    /// The window failed logins are counted in. Default 10m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub ban_failure_window: Option<Duration>,
    /// How long a first ban lasts; a ban again within --ban-time-max of the
    /// last one's end lasts twice as long as that one. Default 15m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub ban_time: Option<Duration>,
    /// The longest ban. Default 24h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub ban_time_max: Option<Duration>,
    /// Take Dovecot's auth policy requests (HTTP) here: ADDR:PORT on
    /// loopback, or a Unix socket's absolute path. Off by default.
    #[arg(long, value_name = "ADDR:PORT|PATH")]
    pub dovecot_policy_listen: Option<PolicyAddr>,
    /// Dovecot protocols whose logins grant, comma separated. Default
    /// pop3,imap.
    #[arg(long, value_name = "NAMES", value_delimiter = ',', num_args = 1..)]
    pub dovecot_policy_protocols: Option<Vec<String>>,
    /// File holding the value of the header Dovecot sends with every
    /// request (auth_policy_server_api_header). Mode 600.
    #[arg(long, value_name = "FILE")]
    pub dovecot_policy_secret_file: Option<PathBuf>,
    /// Renew the grants of addresses with a Dovecot session open (IMAP
    /// IDLE) this often; needs Dovecot on this host. Off by default.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(serialize_with = "duration::optional_text::serialize")]
    pub dovecot_sessions_interval: Option<Duration>,
    /// The command listing Dovecot's sessions, as one string. Default
    /// "doveadm -f tab who -1".
    #[arg(long, value_name = "COMMAND")]
    pub dovecot_sessions_command: Option<String>,
    /// Answer Postfix's policy delegation requests here: ADDR:PORT on
    /// loopback, or a Unix socket's absolute path. Off by default.
    #[arg(long, value_name = "ADDR:PORT|PATH")]
    pub postfix_policy_listen: Option<PolicyAddr>,
    /// Postfix's action for a client with a fresh grant. Default OK.
    #[arg(long, value_name = "ACTION")]
    pub postfix_policy_granted: Option<String>,
    /// Postfix's action for a client with neither a grant nor an
    /// exemption. Default "554 5.7.1 Send mail after checking it: log in
    /// to POP3 (or IMAP), then send again".
    #[arg(long, value_name = "ACTION")]
    pub postfix_policy_reject: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub bus: BusArgs,
}

/// Where a daemon serves its Prometheus metrics (`serve`, `agent`).
#[derive(Args, Debug, Clone, Default, Serialize)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics (GET /metrics) on this address
    /// (repeatable), e.g. 127.0.0.1:10110. Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Vec<std::net::SocketAddr>,
}

impl ServeArgs {
    /// No flag given: what `smtp-gate serve` alone parses to.
    pub fn none() -> Self {
        use clap::FromArgMatches;
        let matches = Self::augment_args(clap::Command::new("serve")).get_matches_from(["serve"]);
        Self::from_arg_matches(&matches).expect("serve without flags parses")
    }
}

/// The keys of `smtp-gate serve --config`: its flags' names, but `config`.
pub fn serve_keys() -> Vec<String> {
    config_keys::<ServeArgs>()
}

/// A command's config keys: its flags' names, but `config`.
fn config_keys<A: Args>() -> Vec<String> {
    A::augment_args(clap::Command::new("keys"))
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .filter(|id| id != "config")
        .collect()
}

/// `smtp-gate agent`: every flag is also a key of its `--config` file
/// (agent/config.rs), as for `serve`; flags win.
#[derive(Args, Debug, Serialize)]
pub struct AgentArgs {
    /// TOML file with the settings below as keys.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Interface to gate (the one mail clients come in on).
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub attachment: AttachmentArgs,
    // The gate's settings; its window is also the longest a grant from
    // the bus is applied for, whatever it claims.
    #[command(flatten)]
    #[serde(flatten)]
    pub settings: GateSettingsArgs,
    /// bpffs directory of the gate. Default /sys/fs/bpf/smtp-gate.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub bus: BusLinkArgs,
    /// Where the agent keeps the id of the last entry it applied (and,
    /// beside it, FILE.status.json). Default /var/lib/smtp-gate/bus-position.
    #[arg(long, value_name = "FILE")]
    pub bus_position_file: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub metrics: MetricsArgs,
}

/// The keys of `smtp-gate agent --config`: its flags' names, but `config`.
pub fn agent_keys() -> Vec<String> {
    config_keys::<AgentArgs>()
}

#[derive(Args, Debug)]
pub struct BusStatusArgs {
    #[command(subcommand)]
    pub action: BusAction,
}

#[derive(Subcommand, Debug)]
pub enum BusAction {
    /// Show the edge agent's state (from the status file it rewrites every
    /// few seconds): connected or not, position, lag, last error, grants
    /// and revokes applied, entries and keys rejected.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The agent's config file: its bus_position_file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The agent's position file (the status is FILE.status.json).
        /// Default /var/lib/smtp-gate/bus-position.
        #[arg(long, value_name = "FILE", conflicts_with = "config")]
        bus_position_file: Option<PathBuf>,
    },
}
