//! `smtp-gate serve`'s configuration: a TOML file (`--config`) and the
//! flags, which win. A setting is written once, as a field with its doc
//! comment and default: the keys are the fields of `ServeConfig` and of
//! the structures it embeds (the gate's `AttachRequest`, the POP3
//! service's `ServerConfig`, the grant bus's `BusKeys`, ...), and each has a
//! flag of the same name with `-` for `_` (cli.rs `ServeArgs`, checked
//! against the keys by the tests below). Every value is checked before
//! anything starts; an error names the key and the file, or the flag.
//! SIGHUP reads the file again under the same flags (reload.rs).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use pop3::{config::ServerConfig, trusted_file};
use serde::Deserialize;
use toml::Table;

use super::ban_policy::BanPolicy;
use crate::policy::config::PolicyHooks;
use crate::{
    bus::config::BusKeys,
    cli::{serve_keys, ServeArgs},
    gate::{pins::DEFAULT_PIN_DIR, AttachRequest},
    keys::{self, KeyError},
    metrics::MetricsKeys,
};

/// Everything `serve` needs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Dovecot-style passwd-file (required).
    #[serde(default)]
    pub users: PathBuf,
    /// One Maildir per user below it (required, must exist).
    #[serde(default)]
    pub mail_root: PathBuf,
    /// bpffs directory holding the gate's maps and links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// The gate: interface, mode and settings.
    #[serde(flatten)]
    pub attach: AttachRequest,
    /// The POP3 service.
    #[serde(flatten)]
    pub pop3: ServerConfig,
    /// When failed logins ban a client network (the gate's login ports
    /// and ban prefix are in `attach`).
    #[serde(flatten)]
    pub bans: BanPolicy,
    /// Dovecot's and Postfix's hooks.
    #[serde(flatten)]
    pub hooks: PolicyHooks,
    /// The grant bus: where grants are published for the other hosts.
    #[serde(flatten)]
    pub bus: BusKeys,
    /// Where Prometheus scrapes the daemon.
    #[serde(flatten)]
    pub metrics: MetricsKeys,
    /// Where the settings came from (not a key).
    #[serde(skip)]
    pub source: ConfigSource,
    /// The keys as given, the flags laid over the file's (not a key).
    #[serde(skip)]
    pub given: Table,
}

/// The keys that a reload (SIGHUP) cannot apply, because what they set up
/// is made once at start: the listeners (and which of them are behind a
/// load balancer, and whom they trust: the two go together, so that a
/// reload cannot leave a proxied listener without trusted networks), the
/// greeting's host name, the
/// attachment (interface, mode, pin directory, the grant maps' size),
/// the Maildir store, the grant bus (its connection and what it
/// publishes under are set up at start) and the metrics' listeners. Every
/// other key takes effect on reload.
pub const RESTART_KEYS: [&str; 26] = [
    "listen",
    "listen_tls",
    "proxy_listen",
    "proxy_trusted_networks",
    "hostname",
    "iface",
    "mode",
    "capacity",
    "allow_private_bpffs",
    "pin_dir",
    "mail_root",
    "dovecot_policy_listen",
    "dovecot_policy_protocols",
    "dovecot_policy_secret_file",
    "dovecot_sessions_interval",
    "dovecot_sessions_command",
    "postfix_policy_listen",
    "postfix_policy_granted",
    "postfix_policy_reject",
    "bus",
    "bus_password_file",
    "bus_prefix",
    "bus_stream_length",
    "bus_timeout",
    "bus_origin",
    "metrics_listen",
];

/// The keys that set up or act on this host's gate: refused in a config
/// without `iface` (a host that publishes its logins on the bus only),
/// where they would do nothing. `window` is not among them: it is the
/// published grants' lifetime.
pub const GATE_ONLY_KEYS: [&str; 18] = [
    "mode",
    "capacity",
    "allow_private_bpffs",
    "pin_dir",
    "ports",
    "deny",
    "log_rate",
    "exempt",
    "dest",
    "ban_ports",
    "ban_prefix_v6",
    "ban_failures",
    "ban_failure_window",
    "ban_time",
    "ban_time_max",
    "postfix_policy_listen",
    "postfix_policy_granted",
    "postfix_policy_reject",
];

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

/// Where `serve`'s settings come from: the config file, if any, and the
/// flags, which win. Kept, so that a reload reads the file again under the
/// same flags, and errors found later (by the gate) name what was given.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    file: Option<PathBuf>,
    /// The flags that were given, under their keys.
    flags: Table,
}

impl ConfigSource {
    pub fn new(file: Option<&Path>, flags: &ServeArgs) -> Result<Self> {
        flags.bus.refuse_password().map_err(|e| e.as_flag())?;
        Ok(Self {
            file: file.map(Path::to_path_buf),
            flags: keys::given_flags(flags)?,
        })
    }

    /// The config file (if any) with the flags laid over it, checked.
    pub fn load(&self) -> Result<ServeConfig> {
        let file = self.file.as_deref();
        let mut table = match file {
            Some(path) => {
                let text = trusted_file::read(path, trusted_file::SETTINGS)?;
                let table = keys::parse_table(&text).map_err(|e| self.named(e, false))?;
                // The file is checked as it is, so that a bad value in it
                // is found even while a flag stands in for it.
                let in_file =
                    ServeConfig::from_table(table.clone()).map_err(|e| self.named(e, false))?;
                in_file
                    .bus
                    .check_file_keeps_password(path)
                    .map_err(|e| self.named(e, false))?;
                table
            }
            None => Table::new(),
        };
        table.extend(self.flags.clone());
        let mut config = ServeConfig::from_table(table.clone())
            .and_then(|config| config.check().map(|()| config))
            .and_then(|config| config.check_given(&table).map(|()| config))
            .map_err(|e| self.described(e))?;
        config.source = self.clone();
        config.given = table;
        Ok(config)
    }

    /// The error as the operator should read it: the flag if the value
    /// came from one, else the key and the file.
    pub fn described(&self, e: KeyError) -> anyhow::Error {
        let from_flag = e.key.as_ref().is_some_and(|k| self.flags.contains_key(k));
        self.named(e, from_flag)
    }

    fn named(&self, e: KeyError, from_flag: bool) -> anyhow::Error {
        let what = match &e.key {
            Some(key) if from_flag => format!("--{}: {}", key.replace('_', "-"), e.problem),
            Some(key) => format!("key `{key}`: {}", e.problem),
            None => e.problem,
        };
        match &self.file {
            Some(path) if !from_flag => anyhow!("config file {}: {what}", path.display()),
            _ => anyhow!(what),
        }
    }

    /// An error that the gate or the service found later about one key
    /// (a [`KeyError`] anywhere in it), named as [`Self::described`] does.
    pub fn name_the_key(&self, e: anyhow::Error) -> anyhow::Error {
        match e.downcast_ref::<KeyError>() {
            Some(key_error) => self.described(key_error.clone()),
            None => e,
        }
    }

    /// The source of another daemon's settings (`agent`): its config file
    /// and the flags given, under their keys.
    pub fn with_flags(file: Option<&Path>, flags: Table) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            flags,
        }
    }

    /// The config file, if any: its path and its keys as they are (read
    /// under the settings files' rule, errors naming the file).
    pub fn file_table(&self) -> Result<Option<(&Path, Table)>> {
        let Some(path) = self.file.as_deref() else {
            return Ok(None);
        };
        let text = trusted_file::read(path, trusted_file::SETTINGS)?;
        let table = keys::parse_table(&text).map_err(|e| self.named(e, false))?;
        Ok(Some((path, table)))
    }

    /// The flags given, under their keys.
    pub fn flags(&self) -> &Table {
        &self.flags
    }

    /// An error of the file's own value for a key, named with the file.
    pub fn in_file(&self, e: KeyError) -> anyhow::Error {
        self.named(e, false)
    }
}

impl ServeConfig {
    /// The config file (if any) with the flags laid over it, checked.
    pub fn load(file: Option<&Path>, flags: &ServeArgs) -> Result<Self> {
        ConfigSource::new(file, flags)?.load()
    }

    /// A config file's text, read but not checked (`check`).
    pub fn from_toml(text: &str) -> Result<Self> {
        keys::parse_table(text)
            .and_then(Self::from_table)
            .map_err(|e| ConfigSource::default().described(e))
    }

    fn from_table(table: Table) -> Result<Self, KeyError> {
        keys::read_known(table, &serve_keys())
    }

    /// Keeps in `new` (a reloaded config) the values of the keys that
    /// only a restart can change ([`RESTART_KEYS`]), and says which of them
    /// `new` wanted changed.
    pub fn keep_restart_only(&self, new: &mut ServeConfig) -> Vec<&'static str> {
        fn keep<T: PartialEq + Clone>(
            key: &'static str,
            old: &T,
            new: &mut T,
            kept: &mut Vec<&'static str>,
        ) {
            if old != new {
                new.clone_from(old);
                kept.push(key);
            }
        }
        let mut kept = Vec::new();
        keep("listen", &self.pop3.listen, &mut new.pop3.listen, &mut kept);
        keep(
            "listen_tls",
            &self.pop3.listen_tls,
            &mut new.pop3.listen_tls,
            &mut kept,
        );
        keep(
            "proxy_listen",
            &self.pop3.proxy_listen,
            &mut new.pop3.proxy_listen,
            &mut kept,
        );
        keep(
            "proxy_trusted_networks",
            &self.pop3.proxy_trusted_networks,
            &mut new.pop3.proxy_trusted_networks,
            &mut kept,
        );
        keep(
            "hostname",
            &self.pop3.hostname,
            &mut new.pop3.hostname,
            &mut kept,
        );
        keep(
            "iface",
            &self.attach.iface,
            &mut new.attach.iface,
            &mut kept,
        );
        keep("mode", &self.attach.mode, &mut new.attach.mode, &mut kept);
        keep(
            "capacity",
            &self.attach.capacity,
            &mut new.attach.capacity,
            &mut kept,
        );
        keep(
            "allow_private_bpffs",
            &self.attach.allow_private_bpffs,
            &mut new.attach.allow_private_bpffs,
            &mut kept,
        );
        keep("pin_dir", &self.pin_dir, &mut new.pin_dir, &mut kept);
        keep("mail_root", &self.mail_root, &mut new.mail_root, &mut kept);
        // The hooks are set up once, at start.
        let (old, hooks) = (&self.hooks, &mut new.hooks);
        keep(
            "dovecot_policy_listen",
            &old.dovecot_policy_listen,
            &mut hooks.dovecot_policy_listen,
            &mut kept,
        );
        keep(
            "dovecot_policy_protocols",
            &old.dovecot_policy_protocols,
            &mut hooks.dovecot_policy_protocols,
            &mut kept,
        );
        keep(
            "dovecot_policy_secret_file",
            &old.dovecot_policy_secret_file,
            &mut hooks.dovecot_policy_secret_file,
            &mut kept,
        );
        keep(
            "dovecot_sessions_interval",
            &old.dovecot_sessions_interval,
            &mut hooks.dovecot_sessions_interval,
            &mut kept,
        );
        keep(
            "dovecot_sessions_command",
            &old.dovecot_sessions_command,
            &mut hooks.dovecot_sessions_command,
            &mut kept,
        );
        keep(
            "postfix_policy_listen",
            &old.postfix_policy_listen,
            &mut hooks.postfix_policy_listen,
            &mut kept,
        );
        keep(
            "postfix_policy_granted",
            &old.postfix_policy_granted,
            &mut hooks.postfix_policy_granted,
            &mut kept,
        );
        keep(
            "postfix_policy_reject",
            &old.postfix_policy_reject,
            &mut hooks.postfix_policy_reject,
            &mut kept,
        );
        // The bus's link and publisher are made once, at start.
        let (old, bus) = (&self.bus, &mut new.bus);
        keep("bus", &old.bus, &mut bus.bus, &mut kept);
        keep(
            "bus_password_file",
            &old.bus_password_file,
            &mut bus.bus_password_file,
            &mut kept,
        );
        keep(
            "bus_prefix",
            &old.bus_prefix,
            &mut bus.bus_prefix,
            &mut kept,
        );
        keep(
            "bus_stream_length",
            &old.bus_stream_length,
            &mut bus.bus_stream_length,
            &mut kept,
        );
        keep(
            "bus_timeout",
            &old.bus_timeout,
            &mut bus.bus_timeout,
            &mut kept,
        );
        keep(
            "bus_origin",
            &old.bus_origin,
            &mut bus.bus_origin,
            &mut kept,
        );
        keep(
            "metrics_listen",
            &self.metrics.metrics_listen,
            &mut new.metrics.metrics_listen,
            &mut kept,
        );
        for key in RESTART_KEYS {
            match self.given.get(key) {
                Some(value) => new.given.insert(key.to_string(), value.clone()),
                None => new.given.remove(key),
            };
        }
        kept
    }

    /// True if this host has a gate (`iface`); without one (and with a
    /// bus) its logins are published on the bus only.
    pub fn has_gate(&self) -> bool {
        !self.attach.iface.is_empty()
    }

    /// True if the daemon serves POP3 (on `listen` or `listen_tls`).
    pub fn serves_pop3(&self) -> bool {
        !self.pop3.listen.is_empty() || !self.pop3.tls_listen().is_empty()
    }

    /// Refuses what `serve` cannot run with: the required keys, the mail
    /// root, and the values each part checks itself.
    pub fn check(&self) -> Result<(), KeyError> {
        // Without POP3 listeners the daemon serves the hooks only (a host
        // that keeps Dovecot): no users, no mail.
        let pop3 = self.serves_pop3();
        // Without a gate, a bus is where the logins go.
        let no_grants = !self.has_gate() && self.bus.bus.is_none();
        let required = [
            ("iface", no_grants, "IF"),
            ("users", pop3 && self.users.as_os_str().is_empty(), "FILE"),
            (
                "mail_root",
                pop3 && self.mail_root.as_os_str().is_empty(),
                "DIR",
            ),
        ];
        for (key, missing, value) in required {
            if missing {
                return Err(KeyError::of(
                    key,
                    format!(
                        "missing (--{} {value}, or {key} = \"{value}\" in the config file)",
                        key.replace('_', "-")
                    ),
                ));
            }
        }
        if !pop3 && !self.hooks.listens() {
            return Err(KeyError::of(
                "listen",
                "empty, and no listen_tls, dovecot_policy_listen or postfix_policy_listen \
                 either: the daemon would serve nothing",
            ));
        }
        if pop3 && !self.mail_root.is_dir() {
            return Err(KeyError::of(
                "mail_root",
                format!("{} is not a directory", self.mail_root.display()),
            ));
        }
        self.attach.check()?;
        self.bans.check()?;
        self.bus.check()?;
        self.metrics.check()?;
        // Without `window`, the gate keeps the one it has: the default's,
        // unless `smtp-gate settings` changed it.
        let window = self
            .attach
            .window
            .unwrap_or(std::time::Duration::from_nanos(
                gate_common::DEFAULT_WINDOW_NS,
            ));
        self.hooks.check(Some(window))?;
        self.pop3
            .check()
            .map_err(|bad| KeyError::of(bad.key, bad.problem))
    }

    /// Refuses, on a host without a gate, the keys of a gate (`given`:
    /// the keys as given, file and flags).
    pub fn check_given(&self, given: &Table) -> Result<(), KeyError> {
        if self.has_gate() {
            return Ok(());
        }
        match GATE_ONLY_KEYS.iter().find(|key| given.contains_key(**key)) {
            Some(key) => Err(KeyError::of(
                key,
                "needs iface: it sets up or acts on this host's gate, and without iface this \
                 host has none (it publishes its logins on the bus only)",
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use clap::Parser;
    use gate_common::DenyMode;
    use toml::Value;

    use super::*;
    use crate::{cli::Cli, gate::AttachMode, policy::listen::PolicyAddr};

    fn err(text: &str) -> String {
        format!("{:#}", ServeConfig::from_toml(text).unwrap_err())
    }

    const EVERY_KEY: &str = r#"
        listen = ["[::]:110", "127.0.0.1:1110"]
        listen_tls = ["[::]:995"]
        tls_cert = "/etc/smtp-gate/fullchain.pem"
        tls_key = "/etc/smtp-gate/privkey.pem"
        users = "/etc/smtp-gate/users"
        mail_root = "/var/mail"
        hostname = "mail.example.org"
        pin_dir = "/sys/fs/bpf/x"
        iface = "eth0"
        mode = "tc"
        ports = [25, 587]
        window = "15m"
        exempt = ["192.0.2.0/24", "2001:db8::/32"]
        dest = ["198.51.100.25/32", "2001:db8:25::/64"]
        deny = "reset"
        capacity = 1000
        log_rate = 3
        allow_private_bpffs = true
        idle_timeout = "20m"
        send_timeout = "30s"
        max_connections = 50
        max_connections_per_ip = 5
        login_timeout = "2m"
        line_timeout = "45s"
        client_prefix_v4 = 24
        client_prefix_v6 = 56
        login_failure_delay = "1s"
        shutdown_grace = "5s"
        apop = false
        proxy_listen = ["127.0.0.1:1110"]
        proxy_trusted_networks = ["10.0.0.0/8", "2001:db8::/32"]
        proxy_timeout = "5s"
        ban_failures = 5
        ban_failure_window = "5m"
        ban_time = "1m"
        ban_time_max = "2h"
        dovecot_policy_listen = "127.0.0.1:10030"
        dovecot_policy_protocols = ["imap"]
        dovecot_policy_secret_file = "/etc/smtp-gate/dovecot-policy.secret"
        dovecot_sessions_interval = "30s"
        dovecot_sessions_command = "doveadm -c /etc/dovecot/dovecot.conf -f tab who -1"
        postfix_policy_listen = "/var/spool/postfix/private/smtp-gate"
        postfix_policy_granted = "DUNNO"
        postfix_policy_reject = "450 4.7.1 log in to POP3 first"
        ban_ports = [110, 995]
        ban_prefix_v6 = 56
        bus = "rediss://pop1@engine.example.net:6380/0"
        bus_password_file = "/etc/smtp-gate/bus-password"
        bus_prefix = "isp-a:"
        bus_stream_length = 200000
        bus_timeout = "500ms"
        bus_origin = "pop1.example.net"
        metrics_listen = ["127.0.0.1:10110", "[::1]:10110"]
    "#;

    #[test]
    fn reads_every_key() {
        let s = ServeConfig::from_toml(EVERY_KEY).unwrap();
        assert_eq!(s.pop3.listen.len(), 2);
        assert_eq!(s.attach.mode, Some(AttachMode::Tc));
        assert_eq!(s.attach.ports, Some(vec![25, 587]));
        assert_eq!(s.attach.window, Some(Duration::from_secs(900)));
        assert_eq!(s.attach.deny, Some(DenyMode::Reset));
        assert_eq!(s.attach.log_rate_per_sec, Some(3));
        assert_eq!(s.attach.exempt.unwrap().len(), 2);
        assert_eq!(s.attach.dest.unwrap().len(), 2);
        assert!(s.attach.allow_private_bpffs);
        assert_eq!(s.pop3.max_connections, 50);
        assert_eq!(s.pop3.send_timeout, Duration::from_secs(30));
        assert_eq!(s.pop3.login_failure_delay, Duration::from_secs(1));
        assert_eq!(s.pop3.login_timeout, Duration::from_secs(120));
        assert_eq!(s.pop3.line_timeout, Duration::from_secs(45));
        assert_eq!((s.pop3.client_prefix_v4, s.pop3.client_prefix_v6), (24, 56));
        assert!(!s.pop3.apop);
        assert_eq!(s.pop3.proxy_listen, ["127.0.0.1:1110".parse().unwrap()]);
        assert_eq!(s.pop3.proxy_trusted_networks.len(), 2);
        assert_eq!(s.pop3.proxy_timeout, Duration::from_secs(5));
        assert_eq!(s.bans.ban_failures, 5);
        assert_eq!(s.bans.ban_failure_window, Duration::from_secs(300));
        assert_eq!(s.bans.ban_time, Duration::from_secs(60));
        assert_eq!(s.bans.ban_time_max, Duration::from_secs(7200));
        assert_eq!(s.attach.ban_ports, Some(vec![110, 995]));
        assert_eq!(s.attach.ban_prefix_v6, Some(56));
        let hooks = &s.hooks;
        assert_eq!(
            hooks.dovecot_policy_listen,
            Some(PolicyAddr::Tcp("127.0.0.1:10030".parse().unwrap()))
        );
        assert_eq!(hooks.dovecot_policy_protocols, ["imap"]);
        assert!(hooks.dovecot_policy_secret_file.is_some());
        assert_eq!(
            hooks.dovecot_sessions_interval,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            hooks.dovecot_sessions_command,
            [
                "doveadm",
                "-c",
                "/etc/dovecot/dovecot.conf",
                "-f",
                "tab",
                "who",
                "-1"
            ]
        );
        assert_eq!(
            hooks.postfix_policy_listen,
            Some(PolicyAddr::Unix(
                "/var/spool/postfix/private/smtp-gate".into()
            ))
        );
        assert_eq!(hooks.postfix_policy_granted, "DUNNO");
        assert_eq!(
            hooks.postfix_policy_reject,
            "450 4.7.1 log in to POP3 first"
        );
        let bus = &s.bus;
        assert_eq!(
            bus.bus.as_ref().map(ToString::to_string).as_deref(),
            Some("rediss://pop1@engine.example.net:6380/0")
        );
        assert_eq!(
            bus.bus_password_file.as_deref(),
            Some(Path::new("/etc/smtp-gate/bus-password"))
        );
        assert_eq!(bus.bus_prefix, "isp-a:");
        assert_eq!(bus.bus_stream_length, 200_000);
        assert_eq!(bus.bus_timeout, Duration::from_millis(500));
        assert_eq!(bus.bus_origin.as_deref(), Some("pop1.example.net"));
        let all = ServeConfig::from_toml("dest = [\"all\"]").unwrap();
        assert_eq!(all.attach.dest, Some(Vec::new()), "all: every destination");
    }

    /// Without POP3 listeners the daemon serves the hooks alone and needs
    /// no users or mail; with neither it would serve nothing.
    #[test]
    fn the_hooks_alone_need_no_users_and_something_must_listen() {
        let hooks_only =
            "iface = \"eth0\"\nlisten = []\ndovecot_policy_listen = \"127.0.0.1:10030\"\n";
        let config = ServeConfig::from_toml(hooks_only).unwrap();
        assert!(!config.serves_pop3());
        config.check().expect("a hooks-only daemon");
        let nothing = ServeConfig::from_toml("iface = \"eth0\"\nlisten = []\n").unwrap();
        let e = nothing.check().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("listen"), "{e}");
        assert!(e.problem.contains("serve nothing"), "{e}");
        let pop3 = ServeConfig::from_toml("iface = \"eth0\"\n").unwrap();
        assert_eq!(pop3.check().unwrap_err().key.as_deref(), Some("users"));
    }

    /// A host without a gate publishes its logins on the bus: it needs a
    /// bus, and a gate's keys, which would do nothing there, are refused
    /// by name (file and flags alike).
    #[test]
    fn a_host_without_a_gate_needs_a_bus_and_takes_no_gate_keys() {
        let dir = tempdir();
        let pop3_only = format!(
            "users = \"/u\"\nmail_root = \"{}\"\nbus = \"redis://10.0.0.5:6379\"\n\
             window = \"10m\"\ndovecot_policy_listen = \"127.0.0.1:10030\"\n",
            dir.display()
        );
        let file = dir.join("smtp-gate.toml");
        write_config(&file, &pop3_only);
        let config = ServeConfig::load(Some(&file), &serve_args(&[])).unwrap();
        assert!(!config.has_gate());
        assert_eq!(config.attach.window, Some(Duration::from_secs(600)));
        for (line, key) in [
            ("ban_failures = 5", "ban_failures"),
            ("ports = [25]", "ports"),
            ("mode = \"tc\"", "mode"),
            (
                "postfix_policy_listen = \"127.0.0.1:10031\"",
                "postfix_policy_listen",
            ),
            ("pin_dir = \"/sys/fs/bpf/x\"", "pin_dir"),
        ] {
            write_config(&file, &format!("{pop3_only}{line}\n"));
            let e = format!(
                "{:#}",
                ServeConfig::load(Some(&file), &serve_args(&[])).unwrap_err()
            );
            let named = format!("config file {}: key `{key}`: needs iface", file.display());
            assert!(e.starts_with(&named), "{line}: {e}");
        }
        write_config(&file, &pop3_only);
        let e = format!(
            "{:#}",
            ServeConfig::load(Some(&file), &serve_args(&["--deny", "reset"])).unwrap_err()
        );
        assert!(e.starts_with("--deny: needs iface"), "{e}");
        // With a gate, the same keys are the gate's.
        let flags = serve_args(&["--iface", "eth0", "--ban-failures", "5"]);
        assert!(ServeConfig::load(Some(&file), &flags).unwrap().has_gate());
        // Neither a gate nor a bus: the logins would grant nothing.
        let no_bus = pop3_only.replace("bus = \"redis://10.0.0.5:6379\"\n", "");
        write_config(&file, &no_bus);
        let e = format!(
            "{:#}",
            ServeConfig::load(Some(&file), &serve_args(&[])).unwrap_err()
        );
        assert!(e.contains("key `iface`: missing"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The engine's password is never taken from a command line (every
    /// user sees it there), and never said back: a `--bus` URL with one
    /// is refused naming the flag, without the password.
    #[test]
    fn a_password_in_the_bus_flag_is_refused_without_showing_it() {
        let dir = tempdir();
        let file = config_with(&dir, "");
        let flags = serve_args(&["--bus", "redis://gate:s3cret@10.0.0.5:6379"]);
        let e = format!("{:#}", ServeConfig::load(Some(&file), &flags).unwrap_err());
        assert!(
            e.starts_with("--bus: redis://gate:***@10.0.0.5:6379 carries a password"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        // A user alone is fine on the command line.
        let flags = serve_args(&["--bus", "redis://gate@10.0.0.5:6379"]);
        let config = ServeConfig::load(Some(&file), &flags).unwrap();
        assert_eq!(
            config.bus.bus.unwrap().secret_text(),
            "redis://gate@10.0.0.5:6379"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A config file whose bus URL carries the password must be its
    /// owner's alone to read, as the password file must.
    #[test]
    fn a_password_in_the_config_file_needs_a_file_others_cannot_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let file = config_with(&dir, "bus = \"redis://gate:s3cret@10.0.0.5:6379\"\n");
        let e = format!(
            "{:#}",
            ServeConfig::load(Some(&file), &serve_args(&[])).unwrap_err()
        );
        let named = format!(
            "config file {}: key `bus`: the URL carries a password",
            file.display()
        );
        assert!(e.starts_with(&named), "{e}");
        assert!(e.contains("mode 0644") && !e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = ServeConfig::load(Some(&file), &serve_args(&[])).unwrap();
        assert!(config.bus.bus.unwrap().has_password());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dovecot_sessions_are_renewed_within_the_window_and_with_dovecot() {
        let base = "iface = \"eth0\"\nlisten = []\npostfix_policy_listen = \"127.0.0.1:10031\"\n";
        let key_of = |extra: &str| {
            ServeConfig::from_toml(&format!("{base}{extra}"))
                .unwrap()
                .check()
                .map_err(|e| (e.key.unwrap_or_default(), e.problem))
        };
        let (key, why) = key_of("dovecot_sessions_interval = \"1m\"\n").unwrap_err();
        assert_eq!(key, "dovecot_sessions_interval");
        assert!(why.contains("dovecot_policy_listen"), "{why}");
        let dovecot = "dovecot_policy_listen = \"/run/smtp-gate/dovecot\"\n";
        key_of(&format!("{dovecot}dovecot_sessions_interval = \"1m\"\n")).unwrap();
        let (key, why) = key_of(&format!(
            "{dovecot}dovecot_sessions_interval = \"15m\"\nwindow = \"15m\"\n"
        ))
        .unwrap_err();
        assert_eq!(key, "dovecot_sessions_interval");
        assert!(why.contains("not shorter than the window"), "{why}");
        let (key, _) = key_of(&format!(
            "{dovecot}dovecot_sessions_interval = \"1m\"\ndovecot_sessions_command = []\n"
        ))
        .unwrap_err();
        assert_eq!(key, "dovecot_sessions_command");
        let (key, _) = key_of("dovecot_policy_protocols = [\"imap pop3\"]\n").unwrap_err();
        assert_eq!(key, "dovecot_policy_protocols");
        let e = err("postfix_policy_listen = \"localhost:10031\"");
        assert!(e.contains("key `postfix_policy_listen`"), "{e}");
    }

    /// Without `window` the gate keeps the default's (15m): an interval
    /// checked against no window at all let 20m through, and every session's
    /// grant lapsed for 5 minutes between two renewals.
    #[test]
    fn without_a_window_the_sessions_interval_is_checked_against_the_default() {
        let base = "iface = \"eth0\"\nlisten = []\n\
                    dovecot_policy_listen = \"/run/smtp-gate/dovecot\"\n";
        let checked = |interval: &str| {
            ServeConfig::from_toml(&format!(
                "{base}dovecot_sessions_interval = \"{interval}\"\n"
            ))
            .unwrap()
            .check()
        };
        let e = checked("20m").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("dovecot_sessions_interval"), "{e}");
        assert!(
            e.problem.contains("not shorter than the window (15m)"),
            "{e}"
        );
        checked("5m").expect("5m renews well within the default window");
    }

    /// The flag layer and the keys are one set: every flag is a key, and
    /// every key (all of them are in EVERY_KEY) has a flag.
    #[test]
    fn every_flag_is_a_key_and_every_key_a_flag() {
        let keys = serve_keys();
        let every: Table = EVERY_KEY.parse().unwrap();
        let mut in_file: Vec<&String> = every.keys().collect();
        in_file.sort();
        let mut flags: Vec<&String> = keys.iter().collect();
        flags.sort();
        assert_eq!(flags, in_file);
        for key in &keys {
            // A value no key takes: the error must be about the value.
            let alone = Table::from_iter([(key.clone(), Value::Table(Table::new()))]);
            let e = Value::Table(alone).try_into::<ServeConfig>().unwrap_err();
            assert!(
                !e.message().contains("unknown field"),
                "the flag --{key} is not a key: {}",
                e.message()
            );
        }
    }

    /// `metrics_listen`: addresses with ports, each once; a bad one stops
    /// the start naming the key and the file, or the flag.
    #[test]
    fn metrics_listen_is_checked_naming_the_key_or_the_flag() {
        let dir = tempdir();
        let no_flags = serve_args(&[]);
        let off = ServeConfig::load(Some(&config_with(&dir, "")), &no_flags).unwrap();
        assert!(off.metrics.metrics_listen.is_empty(), "off by default");
        for line in [
            "metrics_listen = [\"localhost:10110\"]",
            "metrics_listen = [\"127.0.0.1\"]",
            "metrics_listen = [\"127.0.0.1:10110\", \"127.0.0.1:10110\"]",
        ] {
            let file = config_with(&dir, line);
            let e = format!(
                "{:#}",
                ServeConfig::load(Some(&file), &no_flags).unwrap_err()
            );
            let named = format!("config file {}: key `metrics_listen`: ", file.display());
            assert!(e.starts_with(&named), "{line}: {e}");
        }
        let file = config_with(&dir, "");
        let twice = serve_args(&[
            "--metrics-listen",
            "[::1]:10110",
            "--metrics-listen",
            "[::1]:10110",
        ]);
        let e = format!("{:#}", ServeConfig::load(Some(&file), &twice).unwrap_err());
        assert!(
            e.starts_with("--metrics-listen: [::1]:10110 is given twice"),
            "{e}"
        );
        let on = serve_args(&["--metrics-listen", "127.0.0.1:10110"]);
        let config = ServeConfig::load(Some(&file), &on).unwrap();
        assert_eq!(
            config.metrics.metrics_listen,
            ["127.0.0.1:10110".parse().unwrap()]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("window = \"5x\"").contains("key `window`"));
        assert!(err("window = 5").contains("key `window`: expected a string"));
        assert!(err("ports = [25, 70000]").contains("key `ports`"));
        assert!(err("listen = [\"localhost\"]").contains("key `listen`"));
        assert!(err("exempt = [\"10.1.2.3/8\"]").contains("key `exempt`"));
        assert!(err("dest = [\"10.1.2.3/8\"]").contains("key `dest`"));
        assert!(err("dest = [\"all\", \"10.0.0.0/8\"]").contains("key `dest`"));
        assert!(err("allow_private_bpffs = 1").contains("key `allow_private_bpffs`"));
        assert!(err("deny = \"maybe\"").contains("key `deny`"));
        assert!(err("max_connections = -1").contains("key `max_connections`"));
        assert!(err("idle_timeout = \"10m\"\nlisten = [\"x\"]").contains("key `listen`"));
        assert!(err("liste = []").contains("unknown key `liste`"));
        assert!(err("metrics_listen = [\"localhost:10110\"]").contains("key `metrics_listen`"));
        assert!(err("metrics_listen = \"127.0.0.1:10110\"").contains("key `metrics_listen`"));
        assert!(err("this is not toml").contains("not valid TOML"));
    }

    fn serve_args(argv: &[&str]) -> ServeArgs {
        let mut full = vec!["smtp-gate", "serve"];
        full.extend(argv);
        match Cli::parse_from(full).command {
            crate::cli::Command::Serve(args) => args,
            _ => unreachable!("parsed as serve"),
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempdir();
        let file = dir.join("smtp-gate.toml");
        write_config(
            &file,
            &format!(
                "iface = \"eth0\"\nwindow = \"60s\"\nusers = \"/u\"\nmail_root = \"{}\"\n",
                dir.display()
            ),
        );
        let flags = serve_args(&["--window", "5s", "--max-connections", "7"]);
        let merged = ServeConfig::load(Some(&file), &flags).unwrap();
        assert!(merged.pop3.apop, "apop by default");
        assert!(!merged.attach.allow_private_bpffs, "a switch not given");
        // A flag that takes a value can be given as false (the attack
        // review found `--apop false` ignored: false read as not given).
        let off = ServeConfig::load(Some(&file), &serve_args(&["--apop", "false"])).unwrap();
        assert!(!off.pop3.apop, "--apop false");
        assert_eq!(off.given.get("apop"), Some(&toml::Value::Boolean(false)));
        assert_eq!(merged.attach.iface, "eth0");
        assert_eq!(merged.attach.window, Some(Duration::from_secs(5)));
        assert_eq!(merged.pop3.max_connections, 7);
        assert_eq!(merged.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        // A flag's error names the flag, not the file it did not come from.
        let bad = serve_args(&["--idle-timeout", "1m"]);
        let e = format!("{:#}", ServeConfig::load(Some(&file), &bad).unwrap_err());
        assert!(e.starts_with("--idle-timeout: RFC 1939"), "{e}");
        // A key's error names the key and the file.
        let no_flags = serve_args(&[]);
        write_config(
            &file,
            &format!(
                "iface = \"eth0\"\nusers = \"/u\"\nmail_root = \"{}\"\nidle_timeout = \"1m\"\n",
                dir.display()
            ),
        );
        let e = format!(
            "{:#}",
            ServeConfig::load(Some(&file), &no_flags).unwrap_err()
        );
        let named = format!(
            "config file {}: key `idle_timeout`: RFC 1939",
            file.display()
        );
        assert!(e.starts_with(&named), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A flag stands in for a key, but the file's value is still checked:
    /// the daemon must not start on a file that fails once the flag goes.
    #[test]
    fn a_bad_file_value_is_found_under_a_flag() {
        let dir = tempdir();
        let file = dir.join("smtp-gate.toml");
        write_config(&file, "iface = \"lo\"\nwindow = 5\n");
        let flags = serve_args(&["--window", "5s"]);
        let e = format!("{:#}", ServeConfig::load(Some(&file), &flags).unwrap_err());
        assert!(e.contains("key `window`: expected a string"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A path flag a config key cannot hold (not UTF-8) is refused by name.
    #[test]
    fn a_flag_that_cannot_be_a_key_is_named() {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"/tmp/m\xff");
        let argv: Vec<&std::ffi::OsStr> = ["smtp-gate", "serve", "--mail-root"]
            .iter()
            .map(std::ffi::OsStr::new)
            .chain([odd])
            .collect();
        let crate::cli::Command::Serve(flags) = Cli::parse_from(argv).command else {
            unreachable!("parsed as serve")
        };
        let e = format!("{:#}", ServeConfig::load(None, &flags).unwrap_err());
        assert!(e.starts_with("--mail-root: "), "{e}");
    }

    /// A config file as the operator writes it: mode 0644, whatever the
    /// umask of the test run.
    fn write_config(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// A config file that passes, with `extra` appended; its path.
    fn config_with(dir: &Path, extra: &str) -> PathBuf {
        let file = dir.join("smtp-gate.toml");
        write_config(
            &file,
            &format!(
                "iface = \"eth0\"\nusers = \"/u\"\nmail_root = \"{}\"\n{extra}",
                dir.display()
            ),
        );
        file
    }

    /// No number a config file can hold gets past the check to panic or
    /// overflow in the running daemon (tokio's timers, the table of
    /// connections, the kernel's map sizes, the log bucket's arithmetic):
    /// every numeric key, and every duration, refuses huge values and
    /// names the key and the file.
    #[test]
    fn huge_numbers_are_refused_naming_the_key() {
        let dir = tempdir();
        let no_flags = serve_args(&[]);
        let every: Table = EVERY_KEY.parse().unwrap();
        // Above every bound, and then just above each key's own.
        let huge_integers = [i64::MAX, 1 << 62, 1 << 61];
        let just_above = |key: &str| -> Vec<i64> {
            match key {
                "capacity" => vec![u32::MAX as i64 + 1, u32::MAX as i64, (1 << 24) + 1],
                "log_rate" => vec![u32::MAX as i64, 1_000_001],
                "ban_failures" => vec![u32::MAX as i64, 1001],
                "ban_prefix_v6" => vec![256, 129, 0],
                "bus_stream_length" => vec![100_000_001, 999],
                _ => Vec::new(),
            }
        };
        let huge_durations = [
            "18446744073709551615",
            "18446744073709551615s",
            "9223372036854775807ns 1s",
            "584942417355y",
            "101y",
        ];
        let mut tried = Vec::new();
        for (key, example) in &every {
            let values: Vec<Value> = match example {
                Value::Integer(_) => huge_integers
                    .into_iter()
                    .chain(just_above(key))
                    .map(Value::Integer)
                    .collect(),
                Value::String(s) if pop3::duration::parse_duration(s).is_ok() => huge_durations
                    .map(|d| Value::String(d.to_string()))
                    .to_vec(),
                Value::Array(items) if items.iter().all(Value::is_integer) => {
                    let ports = |list: &[i64]| {
                        Value::Array(list.iter().map(|p| Value::Integer(*p)).collect())
                    };
                    vec![
                        ports(&[25, i64::MAX]),
                        ports(&[25, 65536]),
                        ports(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
                    ]
                }
                _ => continue,
            };
            tried.push(key.as_str());
            for value in values {
                let line = Table::from_iter([(key.clone(), value)]).to_string();
                let file = config_with(&dir, &line);
                let e = match ServeConfig::load(Some(&file), &no_flags) {
                    Ok(config) => panic!("{line:?} was taken: {config:?}"),
                    Err(e) => format!("{e:#}"),
                };
                let named = format!("config file {}: key `{key}`: ", file.display());
                assert!(e.starts_with(&named), "{line:?}: {e}");
            }
        }
        tried.sort();
        assert_eq!(
            tried,
            [
                "ban_failure_window",
                "ban_failures",
                "ban_ports",
                "ban_prefix_v6",
                "ban_time",
                "ban_time_max",
                "bus_stream_length",
                "bus_timeout",
                "capacity",
                "client_prefix_v4",
                "client_prefix_v6",
                "dovecot_sessions_interval",
                "idle_timeout",
                "line_timeout",
                "log_rate",
                "login_failure_delay",
                "login_timeout",
                "max_connections",
                "max_connections_per_ip",
                "ports",
                "proxy_timeout",
                "send_timeout",
                "shutdown_grace",
                "window"
            ],
            "the numeric keys"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Ports and capacity that the gate refuses name the key when they
    /// are in the file and the flag when they are flags, also when the
    /// gate finds the problem only once it looks at its pinned maps.
    #[test]
    fn the_gates_errors_name_the_key_or_the_flag() {
        let dir = tempdir();
        let no_flags = serve_args(&[]);
        for (line, key) in [
            ("ports = [25, 25]", "ports"),
            ("ports = []", "ports"),
            ("capacity = 0", "capacity"),
            ("log_rate = 1000001", "log_rate"),
        ] {
            let file = config_with(&dir, line);
            let e = format!(
                "{:#}",
                ServeConfig::load(Some(&file), &no_flags).unwrap_err()
            );
            let named = format!("config file {}: key `{key}`: ", file.display());
            assert!(e.starts_with(&named), "{line}: {e}");
        }
        let flags = serve_args(&["--capacity", "0"]);
        let e = format!(
            "{:#}",
            ServeConfig::load(Some(&config_with(&dir, "")), &flags).unwrap_err()
        );
        assert!(e.starts_with("--capacity: must be 1 to"), "{e}");

        // What the gate says of the pinned maps (gate/attach.rs), named
        // as given.
        let later = || anyhow::Error::new(KeyError::of("capacity", "the maps differ"));
        let in_file = config_with(
            &dir,
            "capacity = 5000
",
        );
        let config = ServeConfig::load(Some(&in_file), &no_flags).unwrap();
        assert_eq!(
            format!("{:#}", config.source.name_the_key(later())),
            format!(
                "config file {}: key `capacity`: the maps differ",
                in_file.display()
            )
        );
        let by_flag = ServeConfig::load(Some(&in_file), &serve_args(&["--capacity", "9"])).unwrap();
        assert_eq!(
            format!("{:#}", by_flag.source.name_the_key(later())),
            "--capacity: the maps differ"
        );
        let other = anyhow!("no such interface");
        assert_eq!(
            format!("{:#}", config.source.name_the_key(other)),
            "no such interface"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The config file decides what the daemon does: one that group or
    /// others may write is refused, naming the file and its mode.
    #[test]
    fn a_config_file_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir();
        let file = config_with(&dir, "");
        let no_flags = serve_args(&[]);
        ServeConfig::load(Some(&file), &no_flags).unwrap();
        for mode in [0o664, 0o646, 0o620] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = format!(
                "{:#}",
                ServeConfig::load(Some(&file), &no_flags).unwrap_err()
            );
            assert!(
                e.starts_with(&format!("{} is mode {mode:04o}: ", file.display())),
                "{e}"
            );
            assert!(e.contains("chmod go-w"), "{e}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Windows editors start a UTF-8 file with a byte order mark; the
    /// TOML parser skips it (TOML 1.0 allows it), as it must stay.
    #[test]
    fn a_config_file_may_start_with_a_byte_order_mark() {
        let dir = tempdir();
        let file = dir.join("smtp-gate.toml");
        write_config(
            &file,
            &format!(
                "\u{FEFF}iface = \"eth0\"\nusers = \"/u\"\nmail_root = \"{}\"\n",
                dir.display()
            ),
        );
        let config = ServeConfig::load(Some(&file), &serve_args(&[])).unwrap();
        assert_eq!(config.attach.iface, "eth0");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A reload keeps exactly the keys of RESTART_KEYS: changed alone in
    /// a new config, each of them is kept at its old value and named, and
    /// any other key is taken as it is. A key added to the settings must
    /// land in one of the two kinds on purpose: for a new key this test
    /// says which it is, through RESTART_KEYS.
    #[test]
    fn a_reload_keeps_exactly_the_restart_keys() {
        let base = "iface = \"lo\"\nusers = \"/u\"\nmail_root = \"/m\"\n";
        let every: Table = EVERY_KEY.parse().unwrap();
        let whole = |c: &ServeConfig| {
            format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                c.users,
                c.mail_root,
                c.pin_dir,
                c.attach,
                c.pop3,
                c.bans,
                c.hooks,
                c.bus,
                c.metrics
            )
        };
        for (key, value) in &every {
            let old = ServeConfig::from_toml(base).unwrap();
            let line = Table::from_iter([(key.clone(), value.clone())]).to_string();
            let mut table: Table = base.parse().unwrap();
            table.insert(key.clone(), value.clone());
            let mut new = ServeConfig::from_table(table.clone()).unwrap();
            new.given = table;
            let wanted = whole(&new);
            assert_ne!(
                whole(&old),
                wanted,
                "{line:?} changes nothing: a useless try"
            );
            let kept = old.keep_restart_only(&mut new);
            if RESTART_KEYS.contains(&key.as_str()) {
                assert_eq!(kept, [key.as_str()], "{line:?}");
                assert_eq!(whole(&new), whole(&old), "{line:?} kept");
                assert_eq!(
                    new.given.get(key),
                    old.given.get(key),
                    "{line:?}: the key as given"
                );
            } else {
                assert!(kept.is_empty(), "{line:?} kept {kept:?}");
                assert_eq!(whole(&new), wanted, "{line:?} taken");
            }
        }
        for key in RESTART_KEYS {
            assert!(every.contains_key(key), "{key} is no key");
        }
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "smtp-gate-config-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn resolve_requires_and_checks() {
        let dir = std::env::temp_dir();
        let base = || {
            let mut config =
                ServeConfig::from_toml("iface = \"eth0\"\nusers = \"/nonexistent/users\"").unwrap();
            config.mail_root = dir.clone();
            config
        };
        let ok = base();
        ok.check().unwrap();
        assert_eq!(
            ok.pop3.listen,
            vec!["[::]:110".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(ok.pop3.idle_timeout, Duration::from_secs(600));
        let mut missing = base();
        missing.attach.iface.clear();
        assert!(missing.check().unwrap_err().key.as_deref() == Some("iface"));
        let mut short = base();
        short.pop3.idle_timeout = Duration::from_secs(60);
        assert!(short.check().unwrap_err().key.as_deref() == Some("idle_timeout"));
        let mut no_root = base();
        no_root.mail_root = "/nonexistent/mail".into();
        assert!(no_root.check().unwrap_err().key.as_deref() == Some("mail_root"));
    }
}
