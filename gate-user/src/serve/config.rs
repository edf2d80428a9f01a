//! `smtp-gate serve` settings: a TOML file (`--config`) whose keys are the
//! flags' names with `_` for `-`, and the flags, which win. Every value is
//! checked before anything starts; an error names the key (or flag) and
//! the file.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use gate_common::DenyMode;
use toml::{Table, Value};

use crate::{
    addr::{dest_scope, Cidr, Dest},
    duration::parse_duration,
    gate::{pins::DEFAULT_PIN_DIR, settings::SettingsChange, AttachMode, AttachRequest},
};

/// Everything `serve` needs, resolved.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: Vec<SocketAddr>,
    pub users: PathBuf,
    pub mail_root: PathBuf,
    pub hostname: String,
    pub pin_dir: PathBuf,
    pub attach: AttachRequest,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub login_failure_delay: Duration,
    pub shutdown_grace: Duration,
}

/// The same settings as they come from flags or the file: all optional.
#[derive(Clone, Debug, Default)]
pub struct ServeSettings {
    pub listen: Option<Vec<SocketAddr>>,
    pub users: Option<PathBuf>,
    pub mail_root: Option<PathBuf>,
    pub hostname: Option<String>,
    pub pin_dir: Option<PathBuf>,
    pub iface: Option<String>,
    pub mode: Option<AttachMode>,
    pub ports: Option<Vec<u16>>,
    pub window: Option<Duration>,
    pub exempt: Option<Vec<Cidr>>,
    /// The destination scope; empty: every destination.
    pub dest: Option<Vec<Cidr>>,
    pub deny: Option<DenyMode>,
    pub capacity: Option<u32>,
    pub log_rate: Option<u32>,
    pub allow_private_bpffs: Option<bool>,
    pub idle_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub login_failure_delay: Option<Duration>,
    pub shutdown_grace: Option<Duration>,
}

const KEYS: &[&str] = &[
    "listen",
    "users",
    "mail_root",
    "hostname",
    "pin_dir",
    "iface",
    "mode",
    "ports",
    "window",
    "exempt",
    "dest",
    "deny",
    "capacity",
    "log_rate",
    "allow_private_bpffs",
    "idle_timeout",
    "max_connections",
    "max_connections_per_ip",
    "login_failure_delay",
    "shutdown_grace",
];

/// RFC 1939 section 3: the autologout timer is at least 10 minutes.
const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

impl ServeSettings {
    /// Reads a config file; an error names the file and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let table: Table = text.parse().map_err(|e| anyhow!("not valid TOML: {e}"))?;
        if let Some(unknown) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
            bail!("unknown key `{unknown}` (known keys: {})", KEYS.join(", "));
        }
        let file = File(&table);
        Ok(Self {
            listen: file.list("listen", |s| {
                s.parse::<SocketAddr>()
                    .map_err(|_| anyhow!("`{s}` is not ADDRESS:PORT (e.g. \"[::]:110\")"))
            })?,
            users: file.string("users")?.map(PathBuf::from),
            mail_root: file.string("mail_root")?.map(PathBuf::from),
            hostname: file.string("hostname")?,
            pin_dir: file.string("pin_dir")?.map(PathBuf::from),
            iface: file.string("iface")?,
            mode: file.parsed("mode", parse_mode)?,
            ports: file.ports()?,
            window: file.parsed("window", parse_duration)?,
            exempt: file.list("exempt", |s| s.parse::<Cidr>())?,
            dest: file
                .list("dest", |s| s.parse::<Dest>())?
                .map(|values| dest_scope(&values).context("key `dest`"))
                .transpose()?,
            deny: file.parsed("deny", parse_deny)?,
            capacity: file.integer("capacity")?,
            log_rate: file.integer("log_rate")?,
            allow_private_bpffs: file.boolean("allow_private_bpffs")?,
            idle_timeout: file.parsed("idle_timeout", parse_duration)?,
            max_connections: file.integer("max_connections")?,
            max_connections_per_ip: file.integer("max_connections_per_ip")?,
            login_failure_delay: file.parsed("login_failure_delay", parse_duration)?,
            shutdown_grace: file.parsed("shutdown_grace", parse_duration)?,
        })
    }

    /// `self` (the flags) wins over `file`.
    pub fn over(self, file: ServeSettings) -> ServeSettings {
        ServeSettings {
            listen: self.listen.or(file.listen),
            users: self.users.or(file.users),
            mail_root: self.mail_root.or(file.mail_root),
            hostname: self.hostname.or(file.hostname),
            pin_dir: self.pin_dir.or(file.pin_dir),
            iface: self.iface.or(file.iface),
            mode: self.mode.or(file.mode),
            ports: self.ports.or(file.ports),
            window: self.window.or(file.window),
            exempt: self.exempt.or(file.exempt),
            dest: self.dest.or(file.dest),
            deny: self.deny.or(file.deny),
            capacity: self.capacity.or(file.capacity),
            log_rate: self.log_rate.or(file.log_rate),
            allow_private_bpffs: self.allow_private_bpffs.or(file.allow_private_bpffs),
            idle_timeout: self.idle_timeout.or(file.idle_timeout),
            max_connections: self.max_connections.or(file.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.or(file.max_connections_per_ip),
            login_failure_delay: self.login_failure_delay.or(file.login_failure_delay),
            shutdown_grace: self.shutdown_grace.or(file.shutdown_grace),
        }
    }

    /// Fills in defaults and checks what must be there.
    pub fn resolve(self) -> Result<ServeConfig> {
        let iface = self
            .iface
            .ok_or_else(|| anyhow!("`iface` is required (--iface IF or iface = \"IF\")"))?;
        let users = self
            .users
            .ok_or_else(|| anyhow!("`users` is required (--users FILE or users = \"FILE\")"))?;
        let mail_root = self.mail_root.ok_or_else(|| {
            anyhow!("`mail_root` is required (--mail-root DIR or mail_root = \"DIR\")")
        })?;
        if !mail_root.is_dir() {
            bail!("`mail_root`: {} is not a directory", mail_root.display());
        }
        let listen = self
            .listen
            .unwrap_or_else(|| vec!["[::]:110".parse().expect("valid default")]);
        if listen.is_empty() {
            bail!("`listen`: at least one address is needed");
        }
        let idle_timeout = self.idle_timeout.unwrap_or(MIN_IDLE_TIMEOUT);
        if idle_timeout < MIN_IDLE_TIMEOUT {
            bail!("`idle_timeout`: RFC 1939 requires at least 10 minutes");
        }
        let max_connections = self.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            bail!("`max_connections` must be at least 1");
        }
        let max_connections_per_ip = self.max_connections_per_ip.unwrap_or(50);
        if max_connections_per_ip == 0 {
            bail!("`max_connections_per_ip` must be at least 1");
        }
        let hostname = match self.hostname {
            Some(h) if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c == '>') => {
                bail!("`hostname`: `{h}` cannot go into an APOP timestamp")
            }
            Some(h) => h,
            None => system_hostname(),
        };
        Ok(ServeConfig {
            listen,
            users,
            mail_root,
            hostname,
            pin_dir: self
                .pin_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
            attach: AttachRequest {
                iface,
                mode: self.mode,
                settings: SettingsChange {
                    window: self.window,
                    ports: self.ports,
                    deny: self.deny,
                    log_rate_per_sec: self.log_rate,
                },
                exempt: self.exempt,
                capacity: self.capacity,
                dest: self.dest,
                allow_private_bpffs: self.allow_private_bpffs.unwrap_or(false),
            },
            idle_timeout,
            max_connections,
            max_connections_per_ip,
            login_failure_delay: self.login_failure_delay.unwrap_or(Duration::from_secs(2)),
            shutdown_grace: self.shutdown_grace.unwrap_or(Duration::from_secs(10)),
        })
    }
}

pub fn parse_mode(text: &str) -> Result<AttachMode> {
    match text {
        "xdp" => Ok(AttachMode::Xdp),
        "xdp-skb" => Ok(AttachMode::XdpSkb),
        "tc" => Ok(AttachMode::Tc),
        other => bail!("`{other}` is not a mode (xdp, xdp-skb, tc)"),
    }
}

pub fn parse_deny(text: &str) -> Result<DenyMode> {
    match text {
        "drop" => Ok(DenyMode::Drop),
        "reset" => Ok(DenyMode::Reset),
        "monitor" => Ok(DenyMode::Monitor),
        other => bail!("`{other}` is not a deny mode (drop, reset, monitor)"),
    }
}

fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// Typed access to the TOML table; every error names its key.
struct File<'a>(&'a Table);

impl File<'_> {
    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => bail!("key `{key}`: expected a string, found {}", other.type_str()),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => bail!(
                "key `{key}`: expected true or false, found {}",
                other.type_str()
            ),
        }
    }

    fn parsed<T>(&self, key: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Option<T>> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => parse(&s).map(Some).with_context(|| format!("key `{key}`")),
        }
    }

    fn integer<T: TryFrom<i64>>(&self, key: &str) -> Result<Option<T>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Integer(n)) => T::try_from(*n)
                .map(Some)
                .map_err(|_| anyhow!("key `{key}`: {n} is out of range")),
            Some(other) => bail!(
                "key `{key}`: expected an integer, found {}",
                other.type_str()
            ),
        }
    }

    fn list<T>(&self, key: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Option<Vec<T>>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => parse(s).with_context(|| format!("key `{key}`")),
                    other => bail!("key `{key}`: expected strings, found {}", other.type_str()),
                })
                .collect::<Result<Vec<T>>>()
                .map(Some),
            Some(other) => bail!("key `{key}`: expected an array, found {}", other.type_str()),
        }
    }

    fn ports(&self) -> Result<Option<Vec<u16>>> {
        match self.0.get("ports") {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::Integer(n) => u16::try_from(*n)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| anyhow!("key `ports`: {n} is not a port")),
                    other => bail!("key `ports`: expected integers, found {}", other.type_str()),
                })
                .collect::<Result<Vec<u16>>>()
                .map(Some),
            Some(other) => bail!("key `ports`: expected an array, found {}", other.type_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", ServeSettings::from_toml(text).unwrap_err())
    }

    #[test]
    fn reads_every_key() {
        let s = ServeSettings::from_toml(
            r#"
            listen = ["[::]:110", "127.0.0.1:1110"]
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
            max_connections = 50
            login_failure_delay = "1s"
            shutdown_grace = "5s"
            "#,
        )
        .unwrap();
        assert_eq!(s.listen.unwrap().len(), 2);
        assert_eq!(s.mode, Some(AttachMode::Tc));
        assert_eq!(s.ports, Some(vec![25, 587]));
        assert_eq!(s.window, Some(Duration::from_secs(900)));
        assert_eq!(s.deny, Some(DenyMode::Reset));
        assert_eq!(s.exempt.unwrap().len(), 2);
        assert_eq!(s.dest.unwrap().len(), 2);
        assert_eq!(s.allow_private_bpffs, Some(true));
        assert_eq!(s.max_connections, Some(50));
        let all = ServeSettings::from_toml("dest = [\"all\"]").unwrap();
        assert_eq!(all.dest, Some(Vec::new()), "all: every destination");
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
        assert!(err("liste = []").contains("unknown key `liste`"));
        assert!(err("this is not toml").contains("not valid TOML"));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = ServeSettings {
            iface: Some("eth0".into()),
            window: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let flags = ServeSettings {
            window: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let merged = flags.over(file);
        assert_eq!(merged.iface.as_deref(), Some("eth0"));
        assert_eq!(merged.window, Some(Duration::from_secs(5)));
    }

    #[test]
    fn resolve_requires_and_checks() {
        let dir = std::env::temp_dir();
        let base = ServeSettings {
            iface: Some("eth0".into()),
            users: Some("/nonexistent/users".into()),
            mail_root: Some(dir.clone()),
            ..Default::default()
        };
        let ok = base.clone().resolve().unwrap();
        assert_eq!(ok.listen, vec!["[::]:110".parse::<SocketAddr>().unwrap()]);
        assert_eq!(ok.idle_timeout, Duration::from_secs(600));
        let missing = ServeSettings {
            iface: None,
            ..base.clone()
        };
        assert!(format!("{:#}", missing.resolve().unwrap_err()).contains("`iface`"));
        let short = ServeSettings {
            idle_timeout: Some(Duration::from_secs(60)),
            ..base.clone()
        };
        assert!(format!("{:#}", short.resolve().unwrap_err()).contains("`idle_timeout`"));
        let no_root = ServeSettings {
            mail_root: Some("/nonexistent/mail".into()),
            ..base
        };
        assert!(format!("{:#}", no_root.resolve().unwrap_err()).contains("`mail_root`"));
    }
}
