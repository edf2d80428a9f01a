//! The daemon's open-file limit: raised to the hard limit at start (the
//! soft one is 1024 under systemd), then `max_connections` must fit in it
//! (pop3's `open_files` says what a session needs), at start and on every
//! reload.

use anyhow::{anyhow, Result};
use log::{error, info, warn};
use pop3::{config::ServerConfig, server::open_files};

use super::config::ServeConfig;

/// Raises the soft RLIMIT_NOFILE to the hard limit and refuses a
/// `max_connections` that does not fit, naming the key.
pub fn make_room(config: &ServerConfig) -> Result<()> {
    let limit = match open_files::raise_soft_limit() {
        Ok(limit) => {
            if limit.now != limit.before {
                info!(
                    "open files: soft limit raised from {} to the hard limit {}",
                    limit.before, limit.now
                );
            }
            limit.now
        }
        Err(e) => {
            let now = open_files::soft_limit();
            warn!("open files: the soft limit {now} cannot be raised: {e}");
            now
        }
    };
    open_files::check_fits(config, limit).map_err(|bad| anyhow!("{bad}"))
}

/// On a reload: a new `max_connections` that does not fit under the
/// open-file limit is not taken (the one in force stays, with an error
/// naming the key); the other new settings are. False if it was not.
pub fn keep_max_connections_that_fit(in_force: &ServeConfig, new: &mut ServeConfig) -> bool {
    keep_fitting(in_force, new, open_files::soft_limit())
}

pub(super) fn keep_fitting(in_force: &ServeConfig, new: &mut ServeConfig, limit: u64) -> bool {
    const KEY: &str = "max_connections";
    let fits = open_files::check_fits(&new.pop3, limit);
    if let Err(bad) = &fits {
        error!(
            "reload (SIGHUP): {bad}; {KEY} stays {}",
            in_force.pop3.max_connections
        );
        new.pop3.max_connections = in_force.pop3.max_connections;
        // The keys as given are what the reload's summary compares, and
        // what the next reload compares against: they say what is in
        // force, not what was refused.
        match in_force.given.get(KEY) {
            Some(value) => new.given.insert(KEY.to_string(), value.clone()),
            None => new.given.remove(KEY),
        };
    }
    fits.is_ok()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::serve) fn config(text: &str) -> ServeConfig {
        let base = format!("iface = \"lo\"\nusers = \"/u\"\nmail_root = \"/m\"\n{text}");
        let mut config = ServeConfig::from_toml(&base).unwrap();
        config.given = base.parse().unwrap();
        config
    }

    #[test]
    fn a_reload_keeps_the_max_connections_in_force_when_the_new_one_does_not_fit() {
        let in_force = config("max_connections = 100\n");
        let limit = open_files::needed_for(200);
        let mut fits = config("max_connections = 200\nidle_timeout = \"20m\"\n");
        keep_fitting(&in_force, &mut fits, limit);
        assert_eq!(fits.pop3.max_connections, 200);
        let mut too_many = config("max_connections = 201\nidle_timeout = \"20m\"\n");
        keep_fitting(&in_force, &mut too_many, limit);
        assert_eq!(too_many.pop3.max_connections, 100, "the one in force");
        assert_eq!(
            too_many.given.get("max_connections"),
            in_force.given.get("max_connections"),
            "the key as given says what is in force"
        );
        assert_eq!(
            too_many.pop3.idle_timeout,
            std::time::Duration::from_secs(1200),
            "the rest is taken"
        );
        // In force by default: the refused key is no longer given.
        let mut too_many = config("max_connections = 1025\n");
        keep_fitting(&config(""), &mut too_many, open_files::needed_for(1024));
        assert_eq!(too_many.given.get("max_connections"), None);
    }
}
