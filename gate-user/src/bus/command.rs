//! Where `smtp-gate grant` and `revoke` find the grant bus: in `serve`'s
//! config file (`--config FILE`: its bus keys, read and checked as the
//! daemon reads them), in the bus flags, which win, or nowhere (then they
//! act on this host's gate alone, as without a bus).
//!
//! With a bus, the grant (or revoke) is published, and this host's own
//! map is written too when a gate is pinned here (the config file's
//! `pin_dir`, or `--pin-dir`): a host whose gate is pinned enforces what
//! it publishes itself, one without a gate (a POP3 host that only
//! publishes) has no map to write.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Result;

use super::config::BusKeys;
use crate::{
    cli::{BusCommandArgs, ServeArgs},
    gate::pins::DEFAULT_PIN_DIR,
    keys::{self, KeyError},
    serve::ServeConfig,
};

/// What a `grant` or `revoke` acts on.
#[derive(Debug)]
pub struct CommandTarget {
    /// The bus, if one is configured (checked).
    pub bus: Option<BusKeys>,
    /// The pin directory of this host's gate.
    pub pin_dir: PathBuf,
    /// The config file's `window`, if it gives one: what a published
    /// grant lives for when this host has no gate to read it from.
    pub window: Option<Duration>,
}

impl CommandTarget {
    /// From the command's flags; `pin_dir` is `--pin-dir` (its default
    /// gives way to the config file's `pin_dir`).
    pub fn resolve(args: &BusCommandArgs, pin_dir: &Path) -> Result<Self> {
        args.keys.refuse_password().map_err(|e| e.as_flag())?;
        let Some(file) = &args.config else {
            return Ok(Self {
                bus: bus_from_flags(&args.keys)?,
                pin_dir: pin_dir.to_path_buf(),
                window: None,
            });
        };
        let mut flags = ServeArgs::none();
        flags.config = Some(file.clone());
        flags.bus = args.keys.clone();
        let config = ServeConfig::load(Some(file), &flags)?;
        let pin_dir = if pin_dir == Path::new(DEFAULT_PIN_DIR) {
            config.pin_dir.clone()
        } else {
            pin_dir.to_path_buf()
        };
        Ok(Self {
            bus: config.bus.bus.is_some().then_some(config.bus),
            pin_dir,
            window: config.attach.window,
        })
    }
}

/// The bus keys of the flags alone: `None` if none was given; a bus flag
/// without `--bus` is refused, naming it.
fn bus_from_flags(flags: &crate::cli::BusArgs) -> Result<Option<BusKeys>> {
    let given = keys::given_flags(flags)?;
    if !given.contains_key("bus") {
        if let Some(key) = given.keys().next() {
            return Err(KeyError::of(key, "needs --bus (or --config FILE with a bus)").as_flag());
        }
        return Ok(None);
    }
    let bus: BusKeys = keys::read(given).map_err(|e| e.as_flag())?;
    bus.check().map_err(|e| e.as_flag())?;
    Ok(Some(bus))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn target(argv: &[&str]) -> Result<CommandTarget> {
        let cli = Cli::try_parse_from(argv).unwrap();
        match cli.command {
            Command::Grant(args) => CommandTarget::resolve(&args.bus, &args.pins.pin_dir),
            Command::Revoke(args) => CommandTarget::resolve(&args.bus, &args.pins.pin_dir),
            other => panic!("not grant or revoke: {other:?}"),
        }
    }

    #[test]
    fn without_a_bus_the_command_acts_on_the_gate_alone() {
        let t = target(&["smtp-gate", "grant", "192.0.2.7"]).unwrap();
        assert!(t.bus.is_none());
        assert_eq!(t.pin_dir, Path::new(DEFAULT_PIN_DIR));
        let t = target(&[
            "smtp-gate",
            "revoke",
            "192.0.2.7",
            "--bus",
            "redis://gate@127.0.0.1:6379",
            "--bus-prefix",
            "isp:",
            "--pin-dir",
            "/sys/fs/bpf/x",
        ])
        .unwrap();
        let bus = t.bus.unwrap();
        assert_eq!(bus.bus.unwrap().to_string(), "redis://gate@127.0.0.1:6379");
        assert_eq!(bus.bus_prefix, "isp:");
        assert_eq!(t.pin_dir, Path::new("/sys/fs/bpf/x"));
    }

    /// A bus flag without a bus, and a password on the command line, are
    /// refused naming the flag (and not showing the password).
    #[test]
    fn bus_flags_are_checked_by_name() {
        let e = format!(
            "{:#}",
            target(&["smtp-gate", "grant", "192.0.2.7", "--bus-prefix", "x:"]).unwrap_err()
        );
        assert!(e.starts_with("--bus-prefix: needs --bus"), "{e}");
        let e = format!(
            "{:#}",
            target(&[
                "smtp-gate",
                "grant",
                "192.0.2.7",
                "--bus",
                "redis://gate:s3cret@127.0.0.1:6379"
            ])
            .unwrap_err()
        );
        assert!(e.starts_with("--bus: redis://gate:***@"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = format!(
            "{:#}",
            target(&[
                "smtp-gate",
                "grant",
                "192.0.2.7",
                "--bus",
                "redis://127.0.0.1:6379",
                "--bus-timeout",
                "11s"
            ])
            .unwrap_err()
        );
        assert!(e.starts_with("--bus-timeout: "), "{e}");
    }

    /// `--config` takes serve's file as the daemon does: its bus, its
    /// pin_dir (unless --pin-dir names another) and its window; the bus
    /// flags win over it.
    #[test]
    fn the_config_file_gives_the_bus_and_the_pin_dir() {
        let dir =
            std::env::temp_dir().join(format!("smtp-gate-bus-command-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("smtp-gate.toml");
        let text = "iface = \"eth0\"\nlisten = []\ndovecot_policy_listen = \"127.0.0.1:10030\"\n\
                    pin_dir = \"/sys/fs/bpf/lab\"\nwindow = \"10m\"\n\
                    bus = \"redis://gate@127.0.0.1:6379\"\nbus_prefix = \"isp:\"\n";
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = file.to_str().unwrap();
        let t = target(&["smtp-gate", "grant", "192.0.2.7", "--config", path]).unwrap();
        let bus = t.bus.unwrap();
        assert_eq!(bus.bus_prefix, "isp:");
        assert_eq!(t.pin_dir, Path::new("/sys/fs/bpf/lab"));
        assert_eq!(t.window, Some(Duration::from_secs(600)));
        let t = target(&[
            "smtp-gate",
            "revoke",
            "192.0.2.7",
            "--config",
            path,
            "--bus-prefix",
            "other:",
            "--pin-dir",
            "/sys/fs/bpf/y",
        ])
        .unwrap();
        assert_eq!(t.bus.unwrap().bus_prefix, "other:");
        assert_eq!(t.pin_dir, Path::new("/sys/fs/bpf/y"));
        // A file that cannot be serve's is refused as serve refuses it.
        std::fs::write(&file, text.replace("isp:", "a b")).unwrap();
        let e = format!(
            "{:#}",
            target(&["smtp-gate", "grant", "192.0.2.7", "--config", path]).unwrap_err()
        );
        assert!(e.contains("key `bus_prefix`"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
