//! SIGHUP: the daemon reads its config file again, under the same flags,
//! and its users file, and applies what can change while it runs: the
//! gate's settings (window, ports, deny mode, log rate, exempt networks,
//! destination scope), the POP3 service's limits and timeouts, and the
//! users. What only a restart can change (config.rs `RESTART_KEYS`) keeps
//! its value, with a warning. Sessions stay open. A file that cannot be
//! taken changes nothing of its part and says why; the users in force stay
//! until a good users file comes. One line says what changed.

use std::sync::Arc;

use anyhow::Result;
use gate_common::{DenyMode, Settings};
use log::{error, info, warn};
use pop3::{
    auth::{live_users::LiveUsers, users_file::UsersFile},
    duration::format_duration,
    live_config::LiveConfig,
};
use tokio::{signal::unix::Signal, sync::watch};
use tokio_util::sync::CancellationToken;
use toml::Value;

use super::{
    config::{ServeConfig, RESTART_KEYS},
    open_files, users,
};
use crate::{
    addr::Cidr,
    cli::serve_keys,
    gate::{AttachRequest, GateMaps, PinDir},
};

/// The keys whose change is read back from the gate itself (a change made
/// meanwhile with `smtp-gate settings` counts as well).
const GATE_KEYS: [&str; 6] = ["window", "ports", "deny", "log_rate", "exempt", "dest"];

pub struct Reloader {
    /// The settings in force.
    config: ServeConfig,
    users: Arc<LiveUsers>,
    service: Arc<LiveConfig>,
    /// What the watch attaches with when it must attach again.
    requests: watch::Sender<AttachRequest>,
}

impl Reloader {
    pub fn new(
        config: ServeConfig,
        users: Arc<LiveUsers>,
        service: Arc<LiveConfig>,
        requests: watch::Sender<AttachRequest>,
    ) -> Self {
        Self {
            config,
            users,
            service,
            requests,
        }
    }

    /// Reloads on every SIGHUP until `stop`.
    pub async fn run(mut self, mut hangups: Signal, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            // Files and the pin directory's lock: off the async threads.
            tokio::task::block_in_place(|| self.reload());
        }
    }

    fn reload(&mut self) {
        let mut changes = Vec::new();
        match self.config.source.load() {
            Ok(mut new) => {
                for key in self.config.keep_restart_only(&mut new) {
                    warn!(
                        "reload (SIGHUP): `{key}` changed, but only a restart applies it; the \
                         daemon keeps {}",
                        shown(self.config.given.get(key))
                    );
                }
                match apply_to_gate(&PinDir::new(&new.pin_dir), &new.attach) {
                    Ok(gate) => changes.extend(gate),
                    Err(e) => error!(
                        "reload (SIGHUP): the gate's settings could not be changed: {e:#}; it \
                         keeps the ones it has"
                    ),
                }
                open_files::keep_max_connections_that_fit(&self.config, &mut new);
                changes.extend(service_changes(&self.config, &new));
                self.service.update(new.pop3.clone());
                self.requests.send_replace(new.attach.clone());
                self.config = new;
            }
            Err(e) => error!("reload (SIGHUP): {e:#}; the settings in force stay"),
        }
        let path = &self.config.users;
        match UsersFile::load(path) {
            // At start an empty file is only a warning; on reload it is far
            // more often a file caught half written (an editor saving, a
            // truncation) than a wish to lock everybody out.
            Ok(new) if new.is_empty() && !self.users.current().is_empty() => error!(
                "reload (SIGHUP): {} has no users (a file half written?); the {} users loaded \
                 before stay (restart the daemon to start with none)",
                path.display(),
                self.users.current().len()
            ),
            Ok(new) => {
                users::report(&new, path);
                let old = self.users.replace(new);
                changes.extend(users::describe(&old.changes_to(&self.users.current())));
            }
            Err(e) => error!(
                "reload (SIGHUP): {e}; the {} users loaded before stay",
                self.users.current().len()
            ),
        }
        if changes.is_empty() {
            info!("reloaded on SIGHUP: nothing changed");
        } else {
            info!("reloaded on SIGHUP: {}", changes.join(", "));
        }
    }
}

/// The service's keys that `new` changes from `old`, as `key old -> new`.
fn service_changes(old: &ServeConfig, new: &ServeConfig) -> Vec<String> {
    serve_keys()
        .into_iter()
        .filter(|key| {
            !RESTART_KEYS.contains(&key.as_str())
                && !GATE_KEYS.contains(&key.as_str())
                && key != "users"
        })
        .filter_map(|key| {
            let (old, new) = (old.given.get(&key), new.given.get(&key));
            (old != new).then(|| format!("{key} {} -> {}", shown(old), shown(new)))
        })
        .collect()
}

/// A key's value as given, or that it was not.
fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "(default)".to_string(), ToString::to_string)
}

/// Writes the settings `req` gives into the gate, as `smtp-gate settings`
/// and `smtp-gate exempt` do (under the pin directory's lock, which every
/// writer of the settings takes), and says what changed in the gate.
fn apply_to_gate(dir: &PinDir, req: &AttachRequest) -> Result<Vec<String>> {
    let _lock = dir.lock()?;
    let mut maps = GateMaps::open(dir)?;
    let before = GateView::read(&maps)?;
    maps.set_settings(&req.apply_settings(maps.settings()?)?)?;
    if let Some(exempt) = &req.exempt {
        maps.exempt_replace(exempt)?;
    }
    if let Some(dest) = &req.dest {
        maps.set_scope(dest)?;
    }
    Ok(before.changes_to(&GateView::read(&maps)?))
}

/// What the gate holds of the operator's settings.
struct GateView {
    settings: Settings,
    exempt: Vec<Cidr>,
    /// Empty: every destination.
    dest: Vec<Cidr>,
}

impl GateView {
    fn read(maps: &GateMaps) -> Result<Self> {
        let settings = maps.settings()?;
        let dest = if settings.dest_scoped != 0 {
            maps.scope_list()?
        } else {
            Vec::new()
        };
        Ok(Self {
            settings,
            exempt: maps.exempt_list()?,
            dest,
        })
    }

    fn changes_to(&self, after: &GateView) -> Vec<String> {
        let (old, new) = (&self.settings, &after.settings);
        let window = |s: &Settings| format_duration(std::time::Duration::from_nanos(s.window_ns));
        let ports = |s: &Settings| {
            s.ports[..s.port_count as usize]
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let deny = |s: &Settings| match DenyMode::from_u32(s.deny_mode) {
            Some(DenyMode::Drop) => "drop",
            Some(DenyMode::Reset) => "reset",
            Some(DenyMode::Monitor) => "monitor",
            None => "unknown",
        };
        let networks = |list: &[Cidr], none: &str| {
            if list.is_empty() {
                return none.to_string();
            }
            let mut shown: Vec<String> = list.iter().map(ToString::to_string).collect();
            shown.sort();
            shown.join(",")
        };
        let mut changes = Vec::new();
        let mut note = |key: &str, old: String, new: String| {
            if old != new {
                changes.push(format!("{key} {old} -> {new}"));
            }
        };
        note("window", window(old), window(new));
        note("ports", ports(old), ports(new));
        note("deny", deny(old).into(), deny(new).into());
        note(
            "log_rate",
            old.log_rate_per_sec.to_string(),
            new.log_rate_per_sec.to_string(),
        );
        note(
            "exempt",
            networks(&self.exempt, "none"),
            networks(&after.exempt, "none"),
        );
        note(
            "dest",
            networks(&self.dest, "all"),
            networks(&after.dest, "all"),
        );
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::open_files::tests::config;

    /// Attack review 10: a max_connections refused for the open-file limit
    /// stayed in force, but the summary said it changed (`41 ->
    /// 100000000`), and the next reload compared against the refused value
    /// (`100000000 -> 40`).
    #[test]
    fn the_summary_of_a_refused_max_connections_says_what_is_in_force() {
        let limit = pop3::server::open_files::needed_for(41);
        let in_force = config("max_connections = 41\n");
        let mut refused = config("max_connections = 100000000\n");
        open_files::keep_fitting(&in_force, &mut refused, limit);
        assert_eq!(service_changes(&in_force, &refused), Vec::<String>::new());
        let mut lower = config("max_connections = 40\n");
        open_files::keep_fitting(&refused, &mut lower, limit);
        assert_eq!(
            service_changes(&refused, &lower),
            ["max_connections 41 -> 40"]
        );
    }
}
