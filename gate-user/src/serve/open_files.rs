//! The daemon's open-file limit: raised to the hard limit at start (the
//! soft one is 1024 under systemd), then `max_connections` must fit in it
//! (pop3's `open_files` says what a session needs), at start and on every
//! reload.

use anyhow::{anyhow, Result};
use log::{error, info, warn};
use pop3::{config::ServerConfig, server::open_files};

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
/// naming the key); the other new settings are.
pub fn keep_max_connections_that_fit(in_force: &ServerConfig, new: &mut ServerConfig) {
    keep_fitting(in_force, new, open_files::soft_limit());
}

fn keep_fitting(in_force: &ServerConfig, new: &mut ServerConfig, limit: u64) {
    if let Err(bad) = open_files::check_fits(new, limit) {
        error!(
            "reload (SIGHUP): {bad}; max_connections stays {}",
            in_force.max_connections
        );
        new.max_connections = in_force.max_connections;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_the_max_connections_in_force_when_the_new_one_does_not_fit() {
        let in_force = ServerConfig {
            max_connections: 100,
            ..ServerConfig::default()
        };
        let limit = open_files::needed_for(200);
        let mut fits = ServerConfig {
            max_connections: 200,
            idle_timeout: std::time::Duration::from_secs(1200),
            ..ServerConfig::default()
        };
        keep_fitting(&in_force, &mut fits, limit);
        assert_eq!(fits.max_connections, 200);
        let mut too_many = ServerConfig {
            max_connections: 201,
            ..fits.clone()
        };
        keep_fitting(&in_force, &mut too_many, limit);
        assert_eq!(too_many.max_connections, 100, "the one in force");
        assert_eq!(
            too_many.idle_timeout,
            std::time::Duration::from_secs(1200),
            "the rest is taken"
        );
    }
}
