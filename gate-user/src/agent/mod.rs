//! `smtp-gate agent`: the grant bus's edge (issue 13). It attaches the
//! gate (or adopts the one there) and holds and watches it as `serve`
//! does (serve/hold.rs, serve/watch.rs), then follows the engine
//! (follower.rs): every grant a POP3 host publishes goes into the local
//! grant map for what is left of it, clamped to this gate's window;
//! every revoke deletes. While the engine is away the map keeps its
//! grants (each lives until it expires), the link reconnects by itself,
//! and the follower catches up from the position it kept on disk.
//!
//! Whoever can write to the engine can open this gate: give the agent an
//! engine user that may only read (deploy/redis-acl.conf).

pub mod config;
mod follower;
mod grant_lines;

use std::{fs, sync::Arc};

use anyhow::{Context, Result};
use log::{info, warn};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch as channel,
};
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
pub use follower::BATCH;

use crate::{
    bus::{
        config::BusKeys,
        link::{Link, LinkSettings},
        names::Names,
        state,
    },
    gate::{GateMaps, PinDir},
    metrics::{self, GateSource, MetricsListeners, Page},
    serve::{
        gate_log, hold,
        watch::{MapUser, Watch},
        GateGrantSink,
    },
    systemd::ServiceManager,
};

/// How often the status line for systemd is looked at (the follower
/// renews what it shows every 2 s).
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the agent; `manager` is told when it is ready and stops, and is
/// fed its watchdog (systemd/).
pub fn run(config: AgentConfig, manager: ServiceManager) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("smtp-gate-agent")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(agent(config, manager))
}

async fn agent(config: AgentConfig, manager: ServiceManager) -> Result<()> {
    // From the start, as serve's (serve/mod.rs).
    manager.spawn_watchdog();
    // Everything that can be refused is refused before the gate changes.
    let settings = link_settings(&config.bus).map_err(|e| config.source.name_the_key(e))?;
    let names = Names::new(&config.bus.bus_prefix).map_err(anyhow::Error::msg)?;
    let position_file = config.bus_position_file.clone();
    let status_file = state::status_file(&position_file);
    if let Some(dir) = position_file.parent() {
        fs::create_dir_all(dir).with_context(|| {
            format!(
                "bus_position_file: cannot make its directory {}",
                dir.display()
            )
        })?;
    }
    let position = match state::read_position(&position_file) {
        Ok(position) => position,
        Err(e) => {
            warn!("bus agent: {e}; loading every grant from the keys");
            None
        }
    };
    if position.is_some_and(|p| p.load_pending) {
        info!(
            "bus agent: a full load from the keys was pending when the agent stopped \
             ({}): it is done first",
            position_file.display()
        );
    }
    // The state directory must take the agent's files now, not fail
    // quietly at the first entry.
    state::write_status(&status_file, &state::AgentStatus::default())
        .with_context(|| format!("bus_position_file: writing {}", status_file.display()))?;

    let bus = settings.url.to_string();
    let link = Link::new(settings)?;
    let metrics_listeners = MetricsListeners::bind(&config.metrics.metrics_listen)?;

    let dir = PinDir::new(&config.pin_dir);
    let iface = config.attach.iface.clone();
    let held =
        hold::attach_and_hold(&dir, &config.attach).map_err(|e| config.source.name_the_key(e))?;
    let maps = GateMaps::open(&dir)?;
    // The clock's probe is loaded now, so that a host where it cannot be
    // fails at start and not at the first grant.
    maps.now_ns()
        .context("reading the gate's clock (jiffies, through a probe program)")?;
    let grants = Arc::new(GateGrantSink::new(maps));
    let trouble = grants.trouble();
    // The agent does not reload: the request stays as started.
    let (_requests, requested) = channel::channel(config.attach.clone());
    let gate_metrics = (!metrics_listeners.is_empty())
        .then(|| GateSource::open(&dir))
        .transpose()?;
    let mut map_users: Vec<Arc<dyn MapUser>> = vec![Arc::clone(&grants) as _];
    map_users.extend(gate_metrics.iter().flat_map(GateSource::map_users));
    let watch = Watch::new(
        held,
        requested,
        dir.clone(),
        map_users,
        GateMaps::open(&dir)?,
    );
    if let Err(e) = gate_log::forward(&dir, &iface) {
        warn!("the gate's denial log is not forwarded: {e:#}");
    }

    let stop = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // The agent reads its config at start only: a SIGHUP (a `systemctl
    // reload`, a closed terminal) is logged and changes nothing, where its
    // default action ended the agent silently, its position unwritten.
    let mut hangups = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let reloads = manager.clone();
    let trigger = stop.clone();
    let stopping = manager.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        stopping.stopping();
        trigger.cancel();
    });
    info!(
        "bus agent: following {bus} (prefix {}) into the gate on {iface}; position in {}",
        config.bus.bus_prefix,
        position_file.display()
    );
    tokio::spawn(link.clone().keep(stop.clone()));
    let watch_stop = CancellationToken::new();
    // The watch and the follower check in with the watchdog
    // (systemd/liveness.rs): a follower stuck in a write stops it.
    let watch_beat = manager.heartbeat("the gate's watch");
    let watch_run = watch.run(trouble, watch_stop.clone());
    let watching = tokio::spawn(async move { watch_beat.during(watch_run).await });
    let (shown, status) = channel::channel(state::AgentStatus::default());
    let follower = follower::Follower::new(
        link,
        names,
        grants,
        follower::Files {
            position: position_file,
            status: status_file,
        },
        position,
        bus,
    )
    .showing_status_in(shown);
    if !metrics_listeners.is_empty() {
        let page = Page {
            gate: gate_metrics,
            agent: Some(status.clone()),
            ..Page::default()
        };
        tokio::spawn(metrics::endpoint::serve(
            metrics_listeners,
            Arc::new(page),
            stop.clone(),
        ));
    }
    manager.spawn_status(STATUS_EVERY, move || status_line(&status.borrow()));
    // The gate is attached or adopted, and held; the metrics' listeners
    // (its only ones) are bound and served; the agent does not wait for
    // the engine (it enforces through an outage): ready. As systemd wants
    // it of a `Type=notify` service, a SIGHUP is a reload (of nothing)
    // from now on: RELOADING=1, READY=1.
    manager.ready();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            reloads.reloading();
            warn!(
                "SIGHUP: the agent reads its config only at start; restart it to apply a \
                 change (it goes on following the bus)"
            );
            reloads.ready();
        }
    });
    manager
        .heartbeat("the bus follower")
        .during(follower.run(stop))
        .await;
    watch_stop.cancel();
    match watching.await {
        Ok(watch) => watch.farewell(&iface),
        Err(e) => log::error!("the gate's watch failed: {e}; the gate may be gone"),
    }
    Ok(())
}

/// The status line for systemd, from what the follower last wrote to
/// its status file.
fn status_line(status: &state::AgentStatus) -> String {
    let mut line = format!(
        "engine {}, lag {}, grants applied {}, revokes applied {}",
        if status.connected {
            "connected"
        } else {
            "NOT CONNECTED"
        },
        status
            .lag_ms
            .map_or_else(|| "unknown".into(), |ms| format!("{ms} ms")),
        status.grants_applied,
        status.revokes_applied
    );
    // A new map is empty until the load: said while it is.
    if let Some(why) = &status.full_load_pending {
        line.push_str(&format!(", full load pending ({why})"));
    }
    line
}

/// The least time the agent gives the engine to answer, whatever
/// `bus_timeout` says: an engine that forks for a snapshot stops
/// answering for some hundreds of milliseconds, and a SCAN timed out
/// starts a full load over.
const LEAST_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The link's settings: the password file is read now (bus/config.rs,
/// as serve reads it); the engine may take `bus_timeout` (at least
/// [`LEAST_RESPONSE_TIMEOUT`]) to answer, and its blocking read (XREAD
/// BLOCK) that and the block. No longer, as before for every command:
/// the time a reply can be dragged out, and what it makes the agent
/// hold (attack review).
fn link_settings(keys: &BusKeys) -> Result<LinkSettings> {
    let response_timeout = keys.bus_timeout.max(LEAST_RESPONSE_TIMEOUT);
    LinkSettings::from_keys(keys, response_timeout, "agent")?.context("bus: missing")
}
