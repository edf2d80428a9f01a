use anyhow::{bail, Result};
use smtp_gate::{
    cli::ServeArgs,
    gate::privilege::{require, CHANGE_GATE},
    serve::{self, ServeConfig},
    systemd::{journal, ServiceManager},
};

pub fn serve(args: ServeArgs) -> Result<()> {
    ignore_early_hangups()?;
    // While no other thread exists: it takes systemd's variables out of
    // the environment (no child of the daemon sees them).
    let manager = ServiceManager::from_env();
    // A host with a gate needs what changing it needs, before anything
    // else is tried; one without (it publishes on the grant bus only)
    // needs none, but its ports' (CAP_NET_BIND_SERVICE below 1024).
    let config = ServeConfig::load(args.config.as_deref(), &args);
    if config.as_ref().map_or(true, ServeConfig::has_gate) {
        require("smtp-gate serve", CHANGE_GATE)?;
    }
    let config = config?;
    journal::init_logger();
    manager.log_setup();
    serve::run(config, manager)
}

/// SIGHUP's default action ends the process, and the reloader's handler
/// is installed only once the runtime runs: a reload sent while the
/// daemon starts (a `systemctl reload` racing the start) killed it.
/// Ignored from the first thing `serve` does, such a SIGHUP is lost
/// harmlessly: the files it would have reloaded are read after it anyway.
/// The handler installed later (tokio's) replaces the disposition.
pub(crate) fn ignore_early_hangups() -> Result<()> {
    // SAFETY: SIG_IGN installs no code to run; no other thread exists yet
    // that could be changing signal dispositions.
    let previous = unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        bail!(
            "ignoring SIGHUP until the reloader holds it: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
