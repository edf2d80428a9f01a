//! SIGHUP: the daemon reads its config file again, under the same flags,
//! and its users file, and applies what can change while it runs: the
//! gate's settings (window, ports, deny mode, log rate, exempt networks,
//! destination scope), the POP3 service's limits and timeouts, and the
//! users, and the TLS certificate (read again even from the same files;
//! tls.rs's watch reads it when its files change). Turning TLS on or off
//! needs a restart. The Dovecot hook's secret is read again from its file
//! (`dovecot_policy_secret_file`, whose path only a restart changes), so
//! that a rotated secret takes effect. What only a restart can change (config.rs `RESTART_KEYS`) keeps
//! its value, with a warning. Sessions stay open. A file that cannot be
//! taken changes nothing of its part and says why; the users in force stay
//! until a good users file comes. One line says what changed, and what was
//! refused.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Result;
use gate_common::{ipv6_mask_prefix, DenyMode, Settings, BANS_V4_IN_USE, BANS_V6_IN_USE};
use log::{error, info, warn};
use pop3::{
    auth::{live_users::LiveUsers, users_file::UsersFile},
    duration::format_duration,
    live_config::LiveConfig,
    tls::Certificates,
};
use tokio::{signal::unix::Signal, sync::watch};
use tokio_util::sync::CancellationToken;
use toml::Value;

use super::{
    ban_sink::GateBanSink,
    config::{ServeConfig, RESTART_KEYS},
    open_files, users, LoginGrants,
};
use crate::{
    addr::Cidr,
    cli::serve_keys,
    gate::{AttachRequest, GateMaps, PinDir},
    policy::dovecot::{LiveSecret, PolicySecret},
    systemd::{liveness::Heartbeat, ServiceManager},
};

/// The keys whose change is read back from the gate itself (a change made
/// meanwhile with `smtp-gate settings` counts as well).
const GATE_KEYS: [&str; 8] = [
    "window",
    "ports",
    "deny",
    "log_rate",
    "exempt",
    "dest",
    "ban_ports",
    "ban_prefix_v6",
];

pub struct Reloader {
    /// The settings in force.
    config: ServeConfig,
    users: Arc<LiveUsers>,
    service: Arc<LiveConfig>,
    /// The certificate in force, if the daemon serves TLS.
    certificates: Option<Arc<Certificates>>,
    /// This host's gate, if it has one.
    gate: Option<GateReload>,
    /// Where the window of a host without a gate goes (what its published
    /// grants live for).
    grants: Arc<LoginGrants>,
    /// The Dovecot endpoint's secret in force, if it has one.
    dovecot_secret: Option<LiveSecret>,
}

/// What a reload changes of this host's gate.
pub struct GateReload {
    /// What the watch attaches with when it must attach again.
    pub requests: watch::Sender<AttachRequest>,
    pub bans: Arc<GateBanSink>,
}

impl Reloader {
    pub fn new(
        config: ServeConfig,
        users: Arc<LiveUsers>,
        service: Arc<LiveConfig>,
        certificates: Option<Arc<Certificates>>,
        gate: Option<GateReload>,
        grants: Arc<LoginGrants>,
        dovecot_secret: Option<LiveSecret>,
    ) -> Self {
        Self {
            config,
            users,
            service,
            certificates,
            gate,
            grants,
            dovecot_secret,
        }
    }

    /// Reloads on every SIGHUP until `stop`, telling `manager` when a
    /// reload starts (`RELOADING=1`) and when it is done (`READY=1`, with
    /// what it refused on the status line), as systemd wants it of a
    /// `Type=notify` service. The loop checks in with the watchdog while
    /// it waits for a signal and while a reload waits for the pin
    /// directory's lock; a reload stuck anywhere else (a file system that
    /// does not answer) stops the watchdog.
    pub async fn run(
        mut self,
        mut hangups: Signal,
        stop: CancellationToken,
        manager: ServiceManager,
    ) {
        let beat = manager.heartbeat("the reloader");
        loop {
            let signalled = beat.during(async {
                tokio::select! {
                    _ = stop.cancelled() => false,
                    got = hangups.recv() => got.is_some(),
                }
            });
            if !signalled.await {
                return;
            }
            manager.reloading();
            // Files and the pin directory's lock: off the async threads.
            let refused = tokio::task::block_in_place(|| self.reload(&beat));
            manager.reloaded(refused.as_deref());
        }
    }

    /// Reloads; gives what was refused, if anything, for the status line.
    fn reload(&mut self, beat: &Heartbeat) -> Option<String> {
        let mut changes = Vec::new();
        // What was not taken, and what stays in its place.
        let mut refused = Vec::new();
        match self.config.source.load() {
            Ok(mut new) => {
                refused.extend(keep_restart_only(&self.config, &mut new));
                if self.gate.is_some() {
                    let dir = PinDir::new(&new.pin_dir);
                    match apply_to_gate(&dir, &new.attach, new.bans.is_on(), beat) {
                        Ok(gate) => changes.extend(gate),
                        Err(e) => {
                            error!(
                                "reload (SIGHUP): the gate's settings could not be changed: \
                                 {e:#}; it keeps the ones it has"
                            );
                            refused
                                .push("the gate's settings (it keeps the ones it has)".to_string());
                        }
                    }
                } else if new.attach.window != self.config.attach.window {
                    // No gate to read the change back from: the window is
                    // the config's alone.
                    changes.push(format!(
                        "window {} -> {}",
                        shown(self.config.given.get("window")),
                        shown(new.given.get("window"))
                    ));
                }
                let (tls_changes, tls_refused) =
                    reload_certificate(&self.config, &mut new, self.certificates.as_deref());
                changes.extend(tls_changes);
                refused.extend(tls_refused);
                if !open_files::keep_max_connections_that_fit(&self.config, &mut new) {
                    refused.push(format!(
                        "max_connections (it stays {})",
                        new.pop3.max_connections
                    ));
                }
                changes.extend(service_changes(&self.config, &new));
                self.service.update(new.pop3.clone());
                if let Some(gate) = &self.gate {
                    gate.bans.set_policy(new.bans.clone());
                    gate.requests.send_replace(new.attach.clone());
                }
                self.grants.set_window(
                    new.attach
                        .window
                        .unwrap_or(Duration::from_nanos(gate_common::DEFAULT_WINDOW_NS)),
                );
                self.config = new;
            }
            Err(e) => {
                error!("reload (SIGHUP): {e:#}; the settings in force stay");
                refused.push("the config file (the settings in force stay)".to_string());
            }
        }
        if self.config.serves_pop3() {
            self.reload_users(&mut changes, &mut refused);
        }
        if let (Some(live), Some(path)) = (
            &self.dovecot_secret,
            &self.config.hooks.dovecot_policy_secret_file,
        ) {
            let (change, refusal) = reload_secret(path, live);
            changes.extend(change);
            refused.extend(refusal);
        }
        let line = summary(&changes, &refused);
        if refused.is_empty() {
            info!("{line}");
            None
        } else {
            warn!("{line}");
            Some(refused.join(", "))
        }
    }

    fn reload_users(&mut self, changes: &mut Vec<String>, refused: &mut Vec<String>) {
        let path = &self.config.users;
        let in_force = self.users.current().len();
        let kept = format!("the users file (the {in_force} users loaded before stay)");
        match UsersFile::load_as_written(path) {
            Ok((new, written)) => match users::refused_on_reload(written) {
                Some(why) => {
                    error!(
                        "reload (SIGHUP): {} {why}; the {in_force} users loaded before stay \
                         (to let nobody log in, comment every user out)",
                        path.display()
                    );
                    refused.push(kept);
                }
                None => {
                    users::report(&new, written, path);
                    let old = self.users.replace(new);
                    changes.extend(users::describe(&old.changes_to(&self.users.current())));
                }
            },
            Err(e) => {
                error!("reload (SIGHUP): {e}; the {in_force} users loaded before stay");
                refused.push(kept);
            }
        }
    }
}

/// Keeps in `new` (a reloaded config) the keys only a restart applies
/// ([`RESTART_KEYS`]); each one `new` wanted changed is warned of and
/// given for the reload's line as refused, with the value that stays: the
/// operator's change did not happen, so the line must not say "nothing
/// changed".
fn keep_restart_only(old: &ServeConfig, new: &mut ServeConfig) -> Vec<String> {
    old.keep_restart_only(new)
        .into_iter()
        .map(|key| {
            let in_force = shown(old.given.get(key));
            warn!(
                "reload (SIGHUP): `{key}` changed, but only a restart applies it; the daemon \
                 keeps {in_force}"
            );
            format!("{key} (only a restart applies it; it stays {in_force})")
        })
        .collect()
}

/// Reads the certificate of `new` (a reloaded config) again, from the
/// same files or from new ones. Refused, the pair and the files in force
/// stay, and so do `tls_cert` and `tls_key` in `new`; so they do when
/// `new` would turn TLS on or off, which only a restart does (the
/// listeners and what the sessions offer were set up at start). Gives what
/// changed and what was refused, for the reload's line.
fn reload_certificate(
    old: &ServeConfig,
    new: &mut ServeConfig,
    certificates: Option<&Certificates>,
) -> (Option<String>, Option<String>) {
    let paths = (&new.pop3.tls_cert, &new.pop3.tls_key);
    let outcome = match (certificates, paths) {
        (Some(certificates), (Some(cert), Some(key))) => certificates
            .reload_from(cert, key)
            .map(|renewed| renewed.then(|| "TLS certificate renewed".to_string()))
            .map_err(|e| {
                error!(
                    "reload (SIGHUP): {e}; new connections keep getting the certificate in force"
                );
                "the TLS certificate (the one in force stays)".to_string()
            }),
        (None, (None, None)) => Ok(None),
        (Some(_), _) => {
            warn!(
                "reload (SIGHUP): `tls_cert` and `tls_key` are gone, but only a restart turns TLS \
                 off; the daemon keeps serving TLS with the certificate in force"
            );
            Err("turning TLS off (a restart does)".to_string())
        }
        (None, _) => {
            warn!(
                "reload (SIGHUP): `tls_cert` and `tls_key` are new, but only a restart turns TLS \
                 on; the daemon goes on without TLS"
            );
            Err("turning TLS on (a restart does)".to_string())
        }
    };
    match outcome {
        Ok(change) => (change, None),
        Err(refused) => {
            new.pop3.tls_cert.clone_from(&old.pop3.tls_cert);
            new.pop3.tls_key.clone_from(&old.pop3.tls_key);
            for key in ["tls_cert", "tls_key"] {
                match old.given.get(key) {
                    Some(value) => new.given.insert(key.to_string(), value.clone()),
                    None => new.given.remove(key),
                };
            }
            (None, Some(refused))
        }
    }
}

/// Reads the Dovecot hook's secret file again: a secret that reads and is
/// valid is put in force at once (the endpoint checks each request
/// against the one in force), and named as a change if it is another; one
/// that cannot be read or is not valid (the file's mode, an empty or short
/// token) leaves the secret in force, and is named as refused with why.
/// Gives what changed and what was refused, for the reload's line.
fn reload_secret(path: &Path, live: &LiveSecret) -> (Option<String>, Option<String>) {
    match PolicySecret::read(path) {
        Ok(secret) => (
            live.replace(secret)
                .then(|| "dovecot_policy_secret_file (secret read anew)".to_string()),
            None,
        ),
        Err(why) => {
            error!(
                "reload (SIGHUP): dovecot_policy_secret_file: {why}; Dovecot's requests must \
                 still carry the secret in force"
            );
            (
                None,
                Some(format!(
                    "dovecot_policy_secret_file ({why}; the secret in force stays)"
                )),
            )
        }
    }
}

/// The reload's one line: what changed, and what was refused (whose
/// errors came before) and stays as it was. Never "nothing changed" when
/// something was refused: the operator's change did not happen.
fn summary(changes: &[String], refused: &[String]) -> String {
    let (changes, refused) = (changes.join(", "), refused.join(", "));
    match (changes.is_empty(), refused.is_empty()) {
        (true, true) => "reloaded on SIGHUP: nothing changed".to_string(),
        (false, true) => format!("reloaded on SIGHUP: {changes}"),
        (true, false) => {
            format!("reloaded on SIGHUP: refused {refused}; nothing else changed")
        }
        (false, false) => format!("reloaded on SIGHUP: {changes}; refused {refused}"),
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

/// How long a reload waits for the pin directory's lock: longer than any
/// command holds it at work (an attach takes well under a second), and
/// well within the unit's watchdog (30 s); after it the gate keeps its
/// settings, and the reload is done without them.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Writes the settings `req` gives into the gate, as `smtp-gate settings`
/// and `smtp-gate exempt` do (under the pin directory's lock, which every
/// writer of the settings takes: waited for [`LOCK_WAIT`] at most, saying
/// so, `beat` checking in meanwhile), and says what changed in the gate.
fn apply_to_gate(
    dir: &PinDir,
    req: &AttachRequest,
    bans_on: bool,
    beat: &Heartbeat,
) -> Result<Vec<String>> {
    let mut said = false;
    let _lock = dir.lock_within(LOCK_WAIT, |_| {
        beat.beat();
        if !said {
            said = true;
            warn!(
                "reload (SIGHUP): waiting up to {} for the lock of the pin directory {}, held by \
                 {}",
                format_duration(LOCK_WAIT),
                dir.path().display(),
                dir.lock_holders()
            );
        }
    })?;
    let mut maps = GateMaps::open(dir)?;
    let before = GateView::read(&maps)?;
    maps.set_settings(&req.apply_settings(maps.settings()?)?)?;
    if bans_on {
        maps.look_for_bans(BANS_V4_IN_USE | BANS_V6_IN_USE)?;
    }
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
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let ports = |s: &Settings| list(&s.ports[..s.port_count as usize]);
        let ban_ports = |s: &Settings| match s.ban_port_count {
            0 => "none".to_string(),
            n => list(&s.ban_ports[..n as usize]),
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
        note("ban_ports", ban_ports(old), ban_ports(new));
        note(
            "ban_prefix_v6",
            ipv6_mask_prefix(&old.ban_mask_v6).to_string(),
            ipv6_mask_prefix(&new.ban_mask_v6).to_string(),
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
    /// Attack review 10: a users file refused on reload ended with
    /// `reloaded on SIGHUP: nothing changed`, as if the file had been
    /// taken and was the same.
    #[test]
    fn the_summary_names_what_was_refused() {
        let changes = ["window 15m -> 5m".to_string()];
        let refused = ["the users file (the 2 users loaded before stay)".to_string()];
        assert_eq!(summary(&[], &[]), "reloaded on SIGHUP: nothing changed");
        assert_eq!(
            summary(&changes, &[]),
            "reloaded on SIGHUP: window 15m -> 5m"
        );
        assert_eq!(
            summary(&[], &refused),
            "reloaded on SIGHUP: refused the users file (the 2 users loaded before stay); \
             nothing else changed"
        );
        assert_eq!(
            summary(&changes, &refused),
            "reloaded on SIGHUP: window 15m -> 5m; refused the users file (the 2 users loaded \
             before stay)"
        );
    }

    /// TLS is set up at start: a reload that adds a certificate, or takes
    /// it away, is refused and keeps the paths as they were (also as the
    /// next reload compares them); one that changes nothing is no change.
    #[test]
    fn a_reload_turns_tls_neither_on_nor_off() {
        let pair = "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n";
        let without = config("");
        let mut with = config(pair);
        assert_eq!(
            reload_certificate(&without, &mut with, None),
            (None, Some("turning TLS on (a restart does)".to_string()))
        );
        assert_eq!(with.pop3.tls_cert, None);
        assert_eq!(with.given.get("tls_cert"), None);
        assert!(service_changes(&without, &with).is_empty());
        let mut still_without = config("");
        assert_eq!(
            reload_certificate(&without, &mut still_without, None),
            (None, None)
        );
    }

    /// Attack review (issue 12's hooks): a reload whose only change was a
    /// key only a restart applies (a hook's, as `listen` or `hostname`)
    /// ended with `reloaded on SIGHUP: nothing changed` (a warning line
    /// before it aside). Every such key is named as refused, with the
    /// value that stays, and is kept for the next reload's comparison.
    #[test]
    fn the_summary_names_a_restart_only_key_that_changed() {
        let in_force = config("postfix_policy_listen = \"127.0.0.1:10031\"\n");
        let restart_only = [
            (
                "postfix_policy_listen = \"127.0.0.1:10032\"\n",
                "postfix_policy_listen (only a restart applies it; it stays \"127.0.0.1:10031\")",
            ),
            (
                "postfix_policy_listen = \"127.0.0.1:10031\"\n\
                 postfix_policy_reject = \"450 4.7.1 log in first\"\n",
                "postfix_policy_reject (only a restart applies it; it stays (default))",
            ),
            (
                "postfix_policy_listen = \"127.0.0.1:10031\"\n\
                 dovecot_policy_protocols = [\"imap\"]\n",
                "dovecot_policy_protocols (only a restart applies it; it stays (default))",
            ),
            (
                "postfix_policy_listen = \"127.0.0.1:10031\"\nhostname = \"other.test\"\n",
                "hostname (only a restart applies it; it stays (default))",
            ),
        ];
        for (text, named) in restart_only {
            let mut new = config(text);
            let refused = keep_restart_only(&in_force, &mut new);
            assert_eq!(refused, [named], "{text:?}");
            let changes = service_changes(&in_force, &new);
            assert_eq!(changes, Vec::<String>::new(), "{text:?}");
            assert_eq!(
                summary(&changes, &refused),
                format!("reloaded on SIGHUP: refused {named}; nothing else changed")
            );
            assert_eq!(
                new.hooks, in_force.hooks,
                "{text:?}: the hooks in force stay"
            );
            assert_eq!(new.pop3.hostname, in_force.pop3.hostname, "{text:?}");
        }
        let mut same = config("postfix_policy_listen = \"127.0.0.1:10031\"\n");
        assert!(keep_restart_only(&in_force, &mut same).is_empty());
    }

    /// Attack review (issue 12's hooks): SIGHUP did not read
    /// dovecot_policy_secret_file again; the line said "nothing changed"
    /// while the old secret stayed in force. A new secret that reads is
    /// put in force and named; an unreadable or invalid one leaves the one
    /// in force and is named as refused, with why.
    #[test]
    fn a_reload_reads_the_dovecot_secret_anew_or_says_why_not() {
        use std::os::unix::fs::PermissionsExt;

        let dir = std::env::temp_dir().join(format!("reload-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dovecot-policy.secret");
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let header = |token: &str| format!("Bearer {token}").into_bytes();
        let (old, new) = ("old-secret-old-secret", "new-secret-new-secret");
        write(&format!("{old}\n"), 0o600);
        let live = LiveSecret::new(PolicySecret::read(&path).unwrap());

        write(&format!("{new}\n"), 0o600);
        let (changed, refused) = reload_secret(&path, &live);
        assert_eq!(
            changed.as_deref(),
            Some("dovecot_policy_secret_file (secret read anew)")
        );
        assert_eq!(refused, None);
        assert!(live.matches(Some(&header(new))));
        assert!(!live.matches(Some(&header(old))), "the old secret is out");
        assert_eq!(
            summary(&Vec::from_iter(changed), &[]),
            "reloaded on SIGHUP: dovecot_policy_secret_file (secret read anew)"
        );
        // The same again: nothing changed.
        assert_eq!(reload_secret(&path, &live), (None, None));

        let refusals = [
            (format!("{old}\n"), 0o644, "is mode 0644"),
            (String::new(), 0o600, "at least 16 characters"),
            ("short\n".to_string(), 0o600, "at least 16 characters"),
        ];
        for (text, mode, why) in refusals {
            write(&text, mode);
            let (changed, refused) = reload_secret(&path, &live);
            assert_eq!(changed, None, "{why}");
            let refused = refused.unwrap();
            assert!(
                refused.starts_with("dovecot_policy_secret_file (") && refused.contains(why),
                "{refused}"
            );
            assert!(
                refused.ends_with("; the secret in force stays)"),
                "{refused}"
            );
            assert!(
                live.matches(Some(&header(new))),
                "{why}: the secret in force stays"
            );
        }
        std::fs::remove_file(&path).unwrap();
        let (_, refused) = reload_secret(&path, &live);
        assert!(refused.unwrap().contains("cannot read"));
        assert!(live.matches(Some(&header(new))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
