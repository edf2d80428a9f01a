//! `smtp-gate agent`'s configuration: a TOML file (`--config`) and the
//! flags, which win, read as `serve`'s are (serve/config.rs): the keys are
//! the fields of `AgentConfig` and of what it embeds (the gate's
//! `AttachRequest`, the bus's `BusKeys`), each with a flag of the same
//! name (cli.rs `AgentArgs`, checked against the keys by the tests
//! below); every value is checked before anything starts, and an error
//! names the key and the file, or the flag.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;
use toml::Table;

use crate::{
    bus::{config::BusKeys, state::DEFAULT_POSITION_FILE},
    cli::{agent_keys, AgentArgs},
    gate::{pins::DEFAULT_PIN_DIR, AttachRequest},
    keys::{self, KeyError},
    metrics::MetricsKeys,
    serve::config::ConfigSource,
};

/// Everything `agent` needs.
#[derive(Clone, Debug, Deserialize)]
pub struct AgentConfig {
    /// bpffs directory holding the gate's maps and links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// The gate: interface, mode and settings. Its window is also the
    /// clamp: no grant from the bus is applied for longer.
    #[serde(flatten)]
    pub attach: AttachRequest,
    /// The engine and the prefix (the publishers' keys `bus_stream_length`
    /// and `bus_origin` are no agent keys).
    #[serde(flatten)]
    pub bus: BusKeys,
    /// The id of the last entry applied, kept across restarts; the status
    /// file is beside it.
    #[serde(default = "default_position_file")]
    pub bus_position_file: PathBuf,
    /// Where Prometheus scrapes the agent.
    #[serde(flatten)]
    pub metrics: MetricsKeys,
    /// Where the settings came from (not a key).
    #[serde(skip)]
    pub source: ConfigSource,
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

fn default_position_file() -> PathBuf {
    PathBuf::from(DEFAULT_POSITION_FILE)
}

impl AgentConfig {
    /// The config file (if any) with the flags laid over it, checked.
    pub fn load(file: Option<&Path>, flags: &AgentArgs) -> Result<Self> {
        flags.bus.refuse_password().map_err(|e| e.as_flag())?;
        let source = ConfigSource::with_flags(file, keys::given_flags(flags)?);
        let mut table = match source.file_table()? {
            Some((path, table)) => {
                // The file is checked as it is, so that a bad value in it
                // is found even while a flag stands in for it.
                let in_file = Self::from_table(table.clone()).map_err(|e| source.in_file(e))?;
                in_file
                    .bus
                    .check_file_keeps_password(path)
                    .map_err(|e| source.in_file(e))?;
                table
            }
            None => Table::new(),
        };
        table.extend(source.flags().clone());
        let mut config = Self::from_table(table)
            .and_then(|config| config.check().map(|()| config))
            .map_err(|e| source.described(e))?;
        config.source = source;
        Ok(config)
    }

    /// A config file's text, read but not checked (`check`).
    pub fn from_toml(text: &str) -> Result<Self> {
        keys::parse_table(text)
            .and_then(Self::from_table)
            .map_err(|e| ConfigSource::default().described(e))
    }

    fn from_table(table: Table) -> Result<Self, KeyError> {
        keys::read_known(table, &agent_keys())
    }

    /// Refuses what the agent cannot run with, naming the key.
    pub fn check(&self) -> Result<(), KeyError> {
        for (key, missing, value) in [
            ("iface", self.attach.iface.is_empty(), "IF"),
            ("bus", self.bus.bus.is_none(), "URL"),
        ] {
            if missing {
                return Err(KeyError::of(
                    key,
                    format!("missing (--{key} {value}, or {key} = \"{value}\" in the config file)"),
                ));
            }
        }
        self.attach.check()?;
        // bus_timeout: at most 10 s past the blocking read's 5 s, so a
        // hung engine is noticed.
        self.bus.check()?;
        let position = &self.bus_position_file;
        if !position.is_absolute() || position.file_name().is_none() {
            return Err(KeyError::of(
                "bus_position_file",
                format!("`{}` is not an absolute file path", position.display()),
            ));
        }
        self.metrics.check()
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt, time::Duration};

    use clap::Parser;
    use toml::Value;

    use super::*;
    use crate::cli::{Cli, Command};

    pub(crate) const EVERY_KEY: &str = r#"
        iface = "eth0"
        mode = "tc"
        exempt = ["192.0.2.0/24", "2001:db8::/32"]
        capacity = 1000
        allow_private_bpffs = true
        window = "15m"
        ports = [25, 587]
        deny = "reset"
        log_rate = 3
        dest = ["198.51.100.25/32"]
        ban_ports = [110, 995]
        ban_prefix_v6 = 56
        pin_dir = "/sys/fs/bpf/x"
        bus = "rediss://edge@engine.example:6380"
        bus_password_file = "/etc/smtp-gate/bus-password"
        bus_prefix = "isp-a:"
        bus_timeout = "1s"
        bus_position_file = "/var/lib/smtp-gate/bus-position"
        metrics_listen = ["127.0.0.1:10111"]
    "#;

    fn agent_args(args: &[&str]) -> AgentArgs {
        let mut argv = vec!["smtp-gate", "agent"];
        argv.extend_from_slice(args);
        match Cli::parse_from(argv).command {
            Command::Agent(args) => args,
            _ => unreachable!("parsed as agent"),
        }
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "smtp-gate-agent-config-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_config(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn reads_every_key_and_every_key_is_a_flag() {
        let config = AgentConfig::from_toml(EVERY_KEY).unwrap();
        config.check().unwrap();
        assert_eq!(config.attach.iface, "eth0");
        assert_eq!(config.attach.window, Some(Duration::from_secs(900)));
        assert_eq!(config.bus.bus_prefix, "isp-a:");
        assert_eq!(config.bus.bus_timeout, Duration::from_secs(1));
        assert_eq!(
            config.bus.bus.unwrap().to_string(),
            "rediss://edge@engine.example:6380"
        );
        let every: Table = EVERY_KEY.parse().unwrap();
        let mut listed: Vec<&str> = every.keys().map(String::as_str).collect();
        let mut keys = agent_keys();
        listed.sort();
        keys.sort();
        assert_eq!(listed, keys, "EVERY_KEY lists every key of AgentArgs");
        // The defaults.
        let least = AgentConfig::from_toml("iface = \"eth0\"\nbus = \"redis://e\"").unwrap();
        least.check().unwrap();
        assert_eq!(least.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(
            least.bus_position_file,
            PathBuf::from("/var/lib/smtp-gate/bus-position")
        );
        assert_eq!(least.bus.bus_prefix, "smtp-gate:");
        assert_eq!(least.bus.bus_timeout, Duration::from_millis(250));
    }

    #[test]
    fn unknown_and_publisher_keys_are_refused() {
        for line in [
            "bus_origin = \"x\"",
            "bus_stream_length = 5000",
            "listen = []",
        ] {
            let e = format!("{:#}", AgentConfig::from_toml(line).unwrap_err());
            assert!(e.starts_with("unknown key"), "{line}: {e}");
        }
    }

    #[test]
    fn missing_and_bad_values_name_the_key_or_the_flag() {
        let dir = tempdir();
        let file = dir.join("agent.toml");
        let none = agent_args(&[]);
        for (text, key) in [
            ("bus = \"redis://e\"", "iface"),
            ("iface = \"eth0\"", "bus"),
            ("iface = \"eth0\"\nbus = \"http://e\"", "bus"),
            (
                "iface = \"eth0\"\nbus = \"redis://e\"\nbus_prefix = \"a b\"",
                "bus_prefix",
            ),
            (
                "iface = \"eth0\"\nbus = \"redis://e\"\nbus_timeout = \"2m\"",
                "bus_timeout",
            ),
            (
                "iface = \"eth0\"\nbus = \"redis://e\"\nports = [25, 25]",
                "ports",
            ),
            (
                "iface = \"eth0\"\nbus = \"redis://e\"\nbus_position_file = \"pos\"",
                "bus_position_file",
            ),
            (
                "iface = \"eth0\"\nbus = \"redis://e\"\nmetrics_listen = [\"localhost:1\"]",
                "metrics_listen",
            ),
            (
                "iface = \"eth0\"\nbus = \"redis://e\"\nmetrics_listen = [\"[::1]:1\", \"[::1]:1\"]",
                "metrics_listen",
            ),
        ] {
            write_config(&file, text, 0o644);
            let e = format!("{:#}", AgentConfig::load(Some(&file), &none).unwrap_err());
            let named = format!("config file {}: key `{key}`: ", file.display());
            assert!(e.starts_with(&named), "{text}: {e}");
        }
        write_config(&file, "iface = \"eth0\"\n", 0o644);
        let flags = agent_args(&["--bus", "redis://e", "--bus-timeout", "2m"]);
        let e = format!("{:#}", AgentConfig::load(Some(&file), &flags).unwrap_err());
        assert!(
            e.starts_with("--bus-timeout: above 0 and at most 10s"),
            "{e}"
        );
        // Flags win over the file.
        let config = AgentConfig::load(
            Some(&file),
            &agent_args(&["--bus", "redis://e", "--iface", "eth1"]),
        )
        .unwrap();
        assert_eq!(config.attach.iface, "eth1");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A password on the command line is everyone's (`ps`): refused,
    /// without showing it; in a config file only others cannot read.
    #[test]
    fn a_password_is_refused_on_the_command_line_and_in_a_readable_file() {
        let flags = agent_args(&["--iface", "eth0", "--bus", "redis://edge:s3cret@e:6379"]);
        let e = format!("{:#}", AgentConfig::load(None, &flags).unwrap_err());
        assert!(
            e.starts_with("--bus: redis://edge:***@e:6379 carries a password"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        let dir = tempdir();
        let file = dir.join("agent.toml");
        let text = "iface = \"eth0\"\nbus = \"redis://edge:s3cret@e:6379\"\n";
        write_config(&file, text, 0o640);
        let e = format!(
            "{:#}",
            AgentConfig::load(Some(&file), &agent_args(&[])).unwrap_err()
        );
        assert!(e.contains("key `bus`: the URL carries a password"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        write_config(&file, text, 0o600);
        let config = AgentConfig::load(Some(&file), &agent_args(&[])).unwrap();
        assert!(config.bus.bus.unwrap().has_password());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A password holding what ends its part of a URL (`/`, `?`, `#`,
    /// `@`) is misread by any URL parser; whoever quotes the URL then
    /// (clap refusing the flag, the config key's error, TOML's error
    /// quoting the line) shows none of it, and the error says how to
    /// write it (attack review).
    #[test]
    fn a_password_that_breaks_the_url_shows_nowhere() {
        let pieces = ["Pw1", "Pw2", "Pw3"];
        let shows_none = |text: &str| {
            for piece in pieces {
                assert!(!text.contains(piece), "{piece} shows: {text}");
            }
        };
        for url in [
            "redis://edge:Pw1/Pw2@engine:6379",
            "redis://edge:Pw1?Pw2#Pw3@engine:6379",
            "redis://edge:Pw1#Pw2@engine:6379",
        ] {
            // The flag: clap's own error would quote the value.
            let e = Cli::try_parse_from(["smtp-gate", "agent", "--iface", "eth0", "--bus", url])
                .unwrap_err()
                .render()
                .to_string();
            shows_none(&e);
            assert!(
                e.contains("--bus <URL>: `redis://edge:***@engine:6379`"),
                "{e}"
            );
            assert!(e.contains("percent-encoded"), "{e}");
            assert!(e.contains("bus_password_file"), "{e}");
            // The config key.
            let dir = tempdir();
            let file = dir.join("agent.toml");
            write_config(
                &file,
                &format!("iface = \"eth0\"\nbus = \"{url}\"\n"),
                0o600,
            );
            let e = format!(
                "{:#}",
                AgentConfig::load(Some(&file), &agent_args(&[])).unwrap_err()
            );
            shows_none(&e);
            assert!(
                e.contains("key `bus`: `redis://edge:***@engine:6379`"),
                "{e}"
            );
            assert!(e.contains("percent-encoded"), "{e}");
            // A line TOML cannot read (an unknown escape), quoted by TOML.
            let broken = url.replace("Pw2", "Pw2\\q");
            write_config(
                &file,
                &format!("iface = \"eth0\"\nbus = \"{broken}\"\n"),
                0o600,
            );
            let e = format!(
                "{:#}",
                AgentConfig::load(Some(&file), &agent_args(&[])).unwrap_err()
            );
            assert!(e.contains("not valid TOML"), "{e}");
            shows_none(&e);
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    /// No number a config file can hold gets past the check to overflow in
    /// the running agent: every numeric key, and every duration, refuses
    /// huge values naming the key and the file.
    #[test]
    fn huge_numbers_are_refused_naming_the_key() {
        let dir = tempdir();
        let file = dir.join("agent.toml");
        let every: Table = EVERY_KEY.parse().unwrap();
        let huge_durations = ["18446744073709551615", "9223372036854775807ns 1s", "101y"];
        let mut tried = Vec::new();
        for (key, example) in &every {
            let values: Vec<Value> = match example {
                Value::Integer(_) => [i64::MAX, 1 << 62, u32::MAX as i64 + 1, 1_000_001_000]
                    .map(Value::Integer)
                    .to_vec(),
                Value::String(s) if pop3::duration::parse_duration(s).is_ok() => huge_durations
                    .map(|d| Value::String(d.to_string()))
                    .to_vec(),
                Value::Array(items) if items.iter().all(Value::is_integer) => vec![
                    Value::Array(vec![Value::Integer(25), Value::Integer(i64::MAX)]),
                    Value::Array(vec![Value::Integer(65536)]),
                ],
                _ => continue,
            };
            tried.push(key.as_str());
            for value in values {
                let line = Table::from_iter([(key.clone(), value)]).to_string();
                write_config(
                    &file,
                    &format!("iface = \"eth0\"\nbus = \"redis://e\"\n{line}"),
                    0o644,
                );
                let e = match AgentConfig::load(Some(&file), &agent_args(&[])) {
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
                "ban_ports",
                "ban_prefix_v6",
                "bus_timeout",
                "capacity",
                "log_rate",
                "ports",
                "window"
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
