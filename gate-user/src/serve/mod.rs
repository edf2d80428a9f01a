//! `smtp-gate serve`: the daemon. It attaches the gate (or adopts the one
//! that is there), serves POP3, and grants every successful login in the
//! gate's map before answering `+OK`. The gate is pinned, so it keeps
//! enforcing, with its grants, while the daemon restarts; while the daemon
//! runs it also holds the gate itself and watches it (watch.rs).
//!
//! With a grant bus (`bus`), every grant is also published for the other
//! hosts' gates (login_grants.rs); a host without `iface` has no gate and
//! only publishes.

mod activity;
mod ban_policy;
mod ban_sink;
pub mod config;
pub(crate) mod gate_log;
mod grant_sink;
pub(crate) mod hold;
mod hooks;
mod login_grants;
mod open_files;
mod reload;
mod users;
pub(crate) mod watch;

use std::sync::Arc;

use anyhow::{Context, Result};
use gate_common::{BANS_V4_IN_USE, BANS_V6_IN_USE};
use log::{info, warn};
use pop3::{
    auth::{
        live_users::LiveUsers,
        users_file::{UsersFile, Written},
    },
    maildrop::maildir::MaildirStore,
    server::{bind_listeners, Backends, Server},
    tls::Tls,
};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::watch as channel,
};
use tokio_util::sync::CancellationToken;

pub use ban_policy::BanPolicy;
pub use ban_sink::GateBanSink;
pub use config::ServeConfig;
pub use grant_sink::GateGrantSink;
pub use login_grants::LoginGrants;

use crate::{
    bus::publisher::Publisher,
    gate::{AttachRequest, GateMaps, PinDir},
    keys::KeyError,
    metrics::{self, GateSource, MetricsListeners, Page},
    systemd::ServiceManager,
};

/// How often the status line for systemd is looked at (and sent if it
/// changed).
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the daemon; `manager` is told when it is ready, reloads and
/// stops, and is fed its watchdog (systemd/).
pub fn run(config: ServeConfig, manager: ServiceManager) -> Result<()> {
    // The open-file limit is raised, and max_connections checked against
    // it, before anything else: everything that can be refused is refused
    // before the gate changes.
    open_files::make_room(&config.pop3)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("smtp-gate")
        .build()
        .context("starting the async runtime")?;
    // SIGHUP is ignored from the start of `serve` (commands/serve.rs);
    // from here on it is held for the reloader, which acts on one that
    // came during the rest of the start.
    let hangups = {
        let _in_runtime = runtime.enter();
        signal(SignalKind::hangup()).context("SIGHUP handler")?
    };
    // Everything that can be refused is refused before the gate changes.
    // A daemon serving the hooks only (no POP3 listener) has no users.
    let users = if config.serves_pop3() {
        UsersFile::load_as_written(&config.users)?
    } else {
        (UsersFile::default(), Written::of(""))
    };
    let tls = Tls::from_config(&config.pop3).map_err(|e| {
        config
            .source
            .name_the_key(KeyError::of(e.key, e.problem).into())
    })?;
    let served = runtime.block_on(serve(config, users, tls, hangups, manager));
    // Every session is over by now. File work of a cut session may still
    // run on the blocking pool (a QUIT's deletions, or a read stuck on a
    // file system that hangs): it gets a moment to end, but cannot keep
    // the daemon from exiting.
    runtime.shutdown_timeout(BLOCKING_WORK_GRACE);
    served
}

/// A listener on a port the gate does not judge for bans: a banned
/// guesser goes on connecting there (the bans attack review listened on
/// 2110 and guessed on after its ban). Said at start, naming the ports.
fn warn_of_unbanned_listeners(dir: &PinDir, server: &Server) {
    let settings = match GateMaps::open(dir).and_then(|maps| maps.settings()) {
        Ok(settings) => settings,
        Err(e) => {
            warn!("cannot read the gate's ban ports: {e:#}");
            return;
        }
    };
    let count = (settings.ban_port_count as usize).min(settings.ban_ports.len());
    if count == 0 {
        return;
    }
    let banned = &settings.ban_ports[..count];
    for addr in server
        .local_addrs()
        .into_iter()
        .chain(server.tls_local_addrs())
    {
        if !banned.contains(&addr.port()) {
            warn!(
                "POP3 listens on {addr}, a port not in ban_ports {banned:?}: a banned client \
                 can still connect there and guess (add {} to ban_ports)",
                addr.port()
            );
        }
    }
}

/// How long the exit waits for file work still running (see `run`).
const BLOCKING_WORK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn serve(
    config: ServeConfig,
    (users, written): (UsersFile, Written),
    tls: Option<Tls>,
    hangups: Signal,
    manager: ServiceManager,
) -> Result<()> {
    // From the start: a start that hangs is noticed too (systemd's
    // watchdog runs from READY=1 on; before, TimeoutStartSec= bounds it).
    manager.spawn_watchdog();
    // The ports first: a daemon that cannot listen must not leave behind a
    // gate that nobody can get a grant from.
    let bind = |addrs: &[std::net::SocketAddr]| {
        bind_listeners(addrs).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                anyhow::anyhow!(
                    "{e}: a port below net.ipv4.ip_unprivileged_port_start (1024 by default) \
                     needs CAP_NET_BIND_SERVICE"
                )
            } else {
                anyhow::Error::from(e)
            }
        })
    };
    let listeners = bind(&config.pop3.listen)?;
    let tls_listeners = bind(&config.pop3.tls_listen())?;
    let hook_listeners = hooks::bind(&config.hooks)?;
    let dovecot_secret = hook_listeners.dovecot_secret();
    let metrics_listeners = MetricsListeners::bind(&config.metrics.metrics_listen)?;
    // The bus's password file is read before the gate changes too; its
    // link connects in the background meanwhile.
    let bus_stop = CancellationToken::new();
    let publisher = start_bus(&config, bus_stop.clone())?;
    let mut gate = if config.has_gate() {
        Some(attach_gate(&config, !metrics_listeners.is_empty())?)
    } else {
        info!(
            "no iface: this host has no gate; its logins are published on the bus only \
             (the other hosts' gates enforce them)"
        );
        None
    };
    let window = config
        .attach
        .window
        .unwrap_or(std::time::Duration::from_nanos(
            gate_common::DEFAULT_WINDOW_NS,
        ));
    let grants = Arc::new(LoginGrants::new(
        gate.as_ref().map(|gate| Arc::clone(&gate.local.grants)),
        publisher.clone(),
        window,
    ));
    let serves_pop3 = config.serves_pop3();
    if serves_pop3 {
        users::report(&users, written, &config.users);
    } else {
        info!("no POP3 listener: serving the mail servers' hooks only");
    }
    let users = Arc::new(LiveUsers::new(users));
    let failures: Arc<dyn pop3::FailureSink> = match &gate {
        Some(gate) => Arc::clone(&gate.local.bans) as _,
        None => Arc::new(pop3::NoFailureSink),
    };
    // Counted for the status line.
    let activity = Arc::new(activity::Activity::default());
    let counted_grants = || activity::CountedGrants {
        grants: Arc::clone(&grants) as _,
        activity: Arc::clone(&activity),
    };
    let backends = Backends {
        auth: Arc::clone(&users) as _,
        store: Arc::new(MaildirStore::new(config.mail_root.clone())),
        grants: Arc::new(activity::CountedLogins(counted_grants())),
        failures: Arc::new(activity::CountedFailures {
            failures,
            activity: Arc::clone(&activity),
        }),
    };
    let mut server = Server::with_listeners(config.pop3.clone(), backends, listeners);
    match tls {
        Some(tls) => server = server.serving_tls(tls, tls_listeners),
        None if !serves_pop3 => {}
        None => warn!(
            "no TLS certificate (tls_cert, tls_key): passwords (USER/PASS) cross the network in \
             clear, and APOP can be attacked offline from one captured session"
        ),
    }
    for addr in server.local_addrs() {
        info!("POP3 listening on {addr}");
    }
    for addr in server.tls_local_addrs() {
        info!("POP3 over TLS listening on {addr}");
    }
    if let Some(gate) = &gate {
        warn_of_unbanned_listeners(&gate.dir, &server);
    }
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let trigger = shutdown.clone();
    let stopping = manager.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        stopping.stopping();
        trigger.cancel();
    });
    let hook_counters = hooks::start(
        hook_listeners,
        &config.hooks,
        Arc::new(counted_grants()),
        gate.as_ref().map(|gate| &gate.local),
        shutdown.clone(),
    )?;
    if !metrics_listeners.is_empty() {
        let page = Page {
            gate: gate.as_mut().and_then(|gate| gate.metrics.take()),
            pop3: serves_pop3.then(|| server.counters()),
            publisher: publisher.clone(),
            agent: None,
            dovecot: hook_counters.dovecot,
            postfix: hook_counters.postfix,
        };
        tokio::spawn(metrics::endpoint::serve(
            metrics_listeners,
            Arc::new(page),
            shutdown.clone(),
        ));
    }
    if let Some(publisher) = &publisher {
        let shown = Arc::clone(publisher);
        tokio::spawn(hooks::log_statistics(
            "bus=publisher",
            move || shown.counts().to_string(),
            shutdown.clone(),
        ));
        // A login right after the start finds the link up, unless the
        // engine cannot be reached (the link says so, and goes on trying).
        publisher.wait_connected(FIRST_CONNECTION).await;
    }
    let (gate_reload, watched) = match gate {
        Some(gate) => {
            let reload = reload::GateReload {
                requests: gate.requests,
                bans: Arc::clone(&gate.local.bans),
            };
            (Some(reload), Some((gate.watch, gate.trouble, gate.iface)))
        }
        None => (None, None),
    };
    let reloader = reload::Reloader::new(
        config,
        users,
        server.live_config(),
        server.certificates(),
        gate_reload,
        Arc::clone(&grants),
        dovecot_secret,
    );
    // Every listener is bound (POP3, POP3 over TLS, the hooks', the
    // metrics') and the gate is attached or adopted, and held: ready. The
    // reloader starts after, so that a SIGHUP of the start is reloaded
    // (RELOADING=1, READY=1) once systemd knows the daemon is up.
    manager.spawn_status(STATUS_EVERY, move || activity.status_line(serves_pop3));
    manager.ready();
    tokio::spawn(reloader.run(hangups, shutdown.clone(), manager.clone()));
    let watch_stop = CancellationToken::new();
    // The watch checks in with the watchdog (systemd/liveness.rs).
    let watching = watched.map(|(watch, trouble, iface)| {
        let beat = manager.heartbeat("the gate's watch");
        let run = watch.run(trouble, watch_stop.clone());
        (tokio::spawn(async move { beat.during(run).await }), iface)
    });
    server.run(shutdown).await;
    watch_stop.cancel();
    bus_stop.cancel();
    if let Some((watching, iface)) = watching {
        match watching.await {
            Ok(watch) => watch.farewell(&iface),
            Err(e) => log::error!("the gate's watch failed: {e}; the gate may be gone"),
        }
    }
    Ok(())
}

/// How long the start waits for the bus's first connection at most.
const FIRST_CONNECTION: std::time::Duration = std::time::Duration::from_secs(1);

/// The publisher, if a bus is configured: its password file read now (a
/// bad one stops the start, naming the key), its link kept by a task
/// until `stop`.
fn start_bus(config: &ServeConfig, stop: CancellationToken) -> Result<Option<Arc<Publisher>>> {
    let Some(url) = &config.bus.bus else {
        return Ok(None);
    };
    let publisher =
        Publisher::start(&config.bus, "serve", stop).map_err(|e| config.source.name_the_key(e))?;
    info!(
        "grant bus: every grant is published to {url} under {}, its +OK waiting at most {} \
         (origin {})",
        config.bus.bus_prefix,
        pop3::duration::format_duration(config.bus.bus_timeout),
        publisher.settings().origin
    );
    Ok(Some(Arc::new(publisher)))
}

/// This host's gate, as the daemon grants and bans in it.
pub struct LocalGate {
    pub grants: Arc<GateGrantSink>,
    pub bans: Arc<GateBanSink>,
}

/// The gate attached (or adopted) and held, with what watches it.
struct AttachedGate {
    local: LocalGate,
    dir: PinDir,
    iface: String,
    watch: watch::Watch,
    requests: channel::Sender<AttachRequest>,
    trouble: Arc<tokio::sync::Notify>,
    /// The metrics' handles on the maps, if the daemon serves metrics.
    metrics: Option<GateSource>,
}

fn attach_gate(config: &ServeConfig, with_metrics: bool) -> Result<AttachedGate> {
    let dir = PinDir::new(&config.pin_dir);
    let iface = config.attach.iface.clone();
    let held =
        hold::attach_and_hold(&dir, &config.attach).map_err(|e| config.source.name_the_key(e))?;
    let grant_maps = GateMaps::open(&dir)?;
    // The clock's probe is loaded now, so that a host where it cannot be
    // fails at start and not at the first login.
    grant_maps
        .now_ns()
        .context("reading the gate's clock (jiffies, through a probe program)")?;
    let grants = Arc::new(GateGrantSink::new(grant_maps));
    let trouble = grants.trouble();
    let mut ban_maps = GateMaps::open(&dir)?;
    if config.bans.is_on() {
        // From the start, not from the first ban: the daemon writes bans
        // without the pin directory's lock, so it should never have to
        // change the settings for one.
        let _lock = dir.lock()?;
        ban_maps.look_for_bans(BANS_V4_IN_USE | BANS_V6_IN_USE)?;
    }
    let bans = Arc::new(GateBanSink::new(
        ban_maps,
        config.bans.clone(),
        Arc::clone(&trouble),
    ));
    let (requests, requested) = channel::channel(config.attach.clone());
    let metrics = with_metrics.then(|| GateSource::open(&dir)).transpose()?;
    let mut map_users: Vec<Arc<dyn watch::MapUser>> =
        vec![Arc::clone(&grants) as _, Arc::clone(&bans) as _];
    map_users.extend(metrics.iter().flat_map(GateSource::map_users));
    let watch = watch::Watch::new(
        held,
        requested,
        dir.clone(),
        map_users,
        GateMaps::open(&dir)?,
    );
    if let Err(e) = gate_log::forward(&dir, &iface) {
        warn!("the gate's denial log is not forwarded: {e:#}");
    }
    Ok(AttachedGate {
        local: LocalGate { grants, bans },
        dir,
        iface,
        watch,
        requests,
        trouble,
        metrics,
    })
}
