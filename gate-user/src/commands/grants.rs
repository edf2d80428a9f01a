use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use pop3::{
    duration::format_duration,
    grant_log::{grant_line, GrantFields, GrantSource},
};
use serde_json::json;
use smtp_gate::{
    bus::{
        command::CommandTarget,
        config::BusKeys,
        publisher::{PublishError, Publisher},
    },
    gate::{
        privilege::{require, READ_CLOCK},
        GateMaps, PinDir,
    },
    syslog,
};
use tokio_util::sync::CancellationToken;

use smtp_gate::cli::{GrantArgs, ListArgs, RevokeArgs};

pub fn grant(args: GrantArgs) -> Result<()> {
    let target = CommandTarget::resolve(&args.bus, &args.pins.pin_dir)?;
    let dir = PinDir::new(&target.pin_dir);
    let Some(bus) = target.bus else {
        // No bus: this host's gate, which must be there.
        require("smtp-gate grant", READ_CLOCK)?;
        let mut maps = GateMaps::open(&dir)?;
        maps.grant(args.addr, args.lifetime)?;
        log_grant(args.addr, args.lifetime, None);
        println!("granted {}{}", args.addr, for_text(args.lifetime));
        return Ok(());
    };
    // With a bus, the map of this host's gate if one is pinned here.
    let local_window = if dir.require_gate().is_ok() {
        require("smtp-gate grant", READ_CLOCK)?;
        let mut maps = GateMaps::open(&dir)?;
        maps.grant(args.addr, args.lifetime)?;
        Some(Duration::from_nanos(maps.settings()?.window_ns))
    } else {
        None
    };
    let lifetime = args
        .lifetime
        .or(local_window)
        .or(target.window)
        .unwrap_or(Duration::from_nanos(gate_common::DEFAULT_WINDOW_NS));
    let published = publish(&bus, |publisher| async move {
        publisher.grant(args.addr, lifetime).await
    })?;
    log_grant(args.addr, args.lifetime, Some(word(&published)));
    let here = if local_window.is_some() {
        "here and "
    } else {
        ""
    };
    match published {
        Ok(()) => {
            println!(
                "granted {}{} {here}on the bus{}",
                args.addr,
                for_text(Some(lifetime)),
                no_gate_note(local_window.is_none(), &dir)
            );
            Ok(())
        }
        Err(e) => {
            if local_window.is_some() {
                println!("granted {}{} here", args.addr, for_text(args.lifetime));
            }
            Err(not_published("grant", args.addr, &bus, &e))
        }
    }
}

pub fn revoke(args: RevokeArgs) -> Result<()> {
    let target = CommandTarget::resolve(&args.bus, &args.pins.pin_dir)?;
    let dir = PinDir::new(&target.pin_dir);
    let Some(bus) = target.bus else {
        let mut maps = GateMaps::open(&dir)?;
        if maps.revoke(args.addr)? {
            syslog::mail_info(&format!("revoke source=cli addr={}", args.addr));
            println!("revoked {}", args.addr);
            return Ok(());
        }
        anyhow::bail!("{} has no grant", args.addr)
    };
    // With a bus, the revoke goes out whether this host held the grant or
    // not: the other hosts' gates may.
    let had_here = if dir.require_gate().is_ok() {
        Some(GateMaps::open(&dir)?.revoke(args.addr)?)
    } else {
        None
    };
    let published = publish(&bus, |publisher| async move {
        publisher.revoke(args.addr).await
    })?;
    syslog::mail_info(&format!(
        "revoke source=cli addr={} bus={}",
        args.addr,
        word(&published)
    ));
    let here = match had_here {
        Some(true) => format!("revoked {} here", args.addr),
        Some(false) => format!("{} had no grant here", args.addr),
        None => format!("no gate here (nothing pinned in {})", dir.path().display()),
    };
    match published {
        Ok(()) => {
            println!(
                "{here}; the revoke of {} is published on the bus",
                args.addr
            );
            Ok(())
        }
        Err(e) => {
            println!("{here}");
            Err(not_published("revoke", args.addr, &bus, &e))
        }
    }
}

/// How long a command waits for the engine to take its connection: as
/// long as the link gives one attempt (a black-holed engine's).
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Runs `publish` with a publisher for `bus`, once it is connected (or
/// [`CONNECT_WAIT`] passed): its outcome, and the link's last error when
/// it was down.
fn publish<F, Fut>(bus: &BusKeys, publish: F) -> Result<Result<(), Failed>>
where
    F: FnOnce(Arc<Publisher>) -> Fut,
    Fut: std::future::Future<Output = Result<(), PublishError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let publisher = Arc::new(Publisher::start(bus, "cli", stop.clone())?);
        publisher.wait_connected(CONNECT_WAIT).await;
        let outcome = publish(Arc::clone(&publisher))
            .await
            .map_err(|error| Failed {
                error,
                link: publisher.link().last_error(),
            });
        stop.cancel();
        Ok(outcome)
    })
}

/// A publication that did not reach the engine.
struct Failed {
    error: PublishError,
    /// What the link last saw go wrong.
    link: Option<String>,
}

fn word(published: &Result<(), Failed>) -> &'static str {
    match published {
        Ok(()) => "published",
        Err(failed) => failed.error.word(),
    }
}

fn not_published(what: &str, addr: IpAddr, bus: &BusKeys, failed: &Failed) -> anyhow::Error {
    let url = bus
        .bus
        .as_ref()
        .map_or_else(String::new, ToString::to_string);
    let link = match (&failed.error, &failed.link) {
        (PublishError::Down, Some(why)) => format!(" ({why})"),
        _ => String::new(),
    };
    anyhow::anyhow!(
        "the {what} of {addr} is NOT published on the bus {url}: {}{link}; the other hosts' \
         gates do not know of it (try again once the engine answers)",
        failed.error
    )
}

/// ` for 1h`, or nothing.
fn for_text(lifetime: Option<Duration>) -> String {
    lifetime.map_or_else(String::new, |l| format!(" for {}", format_duration(l)))
}

fn no_gate_note(no_gate: bool, dir: &PinDir) -> String {
    if no_gate {
        format!(
            " (no gate here: nothing pinned in {})",
            dir.path().display()
        )
    } else {
        String::new()
    }
}

/// The grant line, to syslog: `for=` if given, `bus=` with a bus.
fn log_grant(addr: IpAddr, lifetime: Option<Duration>, bus: Option<&str>) {
    let lifetime = lifetime.map(format_duration);
    let mut extra: Vec<(&str, &str)> = lifetime.iter().map(|l| ("for", l.as_str())).collect();
    extra.extend(bus.map(|word| ("bus", word)));
    syslog::mail_info(&grant_line(
        GrantSource::Cli,
        addr,
        &GrantFields {
            user: None,
            extra: &extra,
        },
    ));
}

pub fn list(args: ListArgs) -> Result<()> {
    let maps = GateMaps::open(&PinDir::new(&args.pins.pin_dir))?;
    let grants: Vec<_> = maps
        .grants()?
        .into_iter()
        .filter(|g| args.all || g.is_fresh())
        .collect();
    if args.json {
        let rows: Vec<_> = grants
            .iter()
            .map(|g| {
                json!({
                    "address": g.addr.to_string(),
                    "age_secs": g.age.as_secs_f64(),
                    "left_secs": g.time_left().as_secs_f64(),
                    "lifetime_secs": g.lifetime.as_secs_f64(),
                    "expired": !g.is_fresh(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if grants.is_empty() {
        println!("no grants");
        return Ok(());
    }
    println!("{:<40} {:>12} {:>12}", "ADDRESS", "AGE", "LEFT");
    for g in &grants {
        let left = if g.is_fresh() {
            // Rounded up: a grant made a moment ago shows its whole window.
            let left = g.time_left();
            format_duration(Duration::from_secs(
                left.as_secs() + u64::from(left.subsec_nanos() > 0),
            ))
        } else {
            "expired".to_string()
        };
        println!("{:<40} {:>12} {:>12}", g.addr, format_duration(g.age), left);
    }
    Ok(())
}
