//! The publishing side of the bus: every grant (and revoke) made on this
//! host goes to the engine, in one round trip, as one transaction:
//!
//! ```text
//! MULTI
//! SET  <prefix>grant:<addr> <expires> PX <expires - issued>   (revoke: DEL <prefix>grant:<addr>)
//! XADD <prefix>events MAXLEN ~ <bus_stream_length> * op grant addr A expires E issued I origin O
//! EXEC
//! ```
//!
//! so an edge that loads the keys and one that follows the stream never
//! see one without the other. Times are the engine's (bus/clock.rs).
//!
//! A login waits for the engine's answer, but never long and never for
//! nothing: at most `bus_timeout`; not at all while the link is down (the
//! link reconnects in the background); not at all when
//! [`MAX_IN_FLIGHT`] publications already wait (an engine that has
//! stopped answering must not pile up the daemon's work). Each of those
//! ends is counted; the log says once that publishing fails and once that
//! it works again, not once per login (per-login detail at debug).
//!
//! A stream whose ids are exhausted (someone added an entry with the last
//! possible id, `18446744073709551615-18446744073709551615`) refuses every
//! XADD for good, while the key is still written: no edge that follows the
//! stream hears of a grant until an operator deletes the stream. That is
//! its own error, counted apart and said in the log when it starts
//! (whatever else was said shortly before), with what to do.

use std::{
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use log::{debug, info, warn};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{
    config::BusKeys,
    event::{Event, Op},
    expiry,
    follow::shorten,
    link::{Link, LinkSettings, LONGEST_ERROR},
    names::Names,
};

/// Publications waiting for the engine at once, at most: far above what
/// one host's logins need within a `bus_timeout`, a bound on what an
/// engine that answers nothing can make the daemon hold.
pub const MAX_IN_FLIGHT: usize = 4096;

/// How long after a failure that was logged a new spell of failures is
/// not logged again (an engine that flaps must not fill the log).
const QUIET_AFTER_LOGGED: Duration = Duration::from_secs(60);

/// What a publisher needs besides its link.
#[derive(Clone, Debug)]
pub struct PublisherSettings {
    pub names: Names,
    /// This host's name in the entries.
    pub origin: String,
    /// `MAXLEN ~` of the stream.
    pub stream_length: u64,
    /// How long a publication waits for the engine's answer.
    pub timeout: Duration,
    /// Publications waiting at once, at most ([`MAX_IN_FLIGHT`]).
    pub max_in_flight: usize,
    /// For the log: `serve` or `cli`.
    pub role: &'static str,
}

impl PublisherSettings {
    /// From the bus keys (checked): the origin is the host name unless
    /// `bus_origin` names one.
    pub fn from_keys(keys: &BusKeys, role: &'static str) -> Result<Self> {
        let origin = keys
            .bus_origin
            .clone()
            .unwrap_or_else(|| pop3::host::system_host_name().to_owned());
        // What an edge takes as an origin (event.rs), checked here so that
        // a host name it would refuse stops the start.
        if origin.is_empty() || origin.len() > 255 || !origin.bytes().all(|b| b.is_ascii_graphic())
        {
            anyhow::bail!(
                "the host name {} cannot be the bus origin: set bus_origin",
                origin.escape_debug()
            );
        }
        Ok(Self {
            names: Names::new(&keys.bus_prefix).map_err(anyhow::Error::msg)?,
            origin,
            stream_length: keys.bus_stream_length,
            timeout: keys.bus_timeout,
            max_in_flight: MAX_IN_FLIGHT,
            role,
        })
    }
}

/// Why a publication did not reach the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// No connection to the engine now.
    Down,
    /// No answer within `bus_timeout`.
    TimedOut,
    /// [`MAX_IN_FLIGHT`] publications wait already.
    Busy,
    /// The engine refused it, or the connection failed under it.
    Failed(String),
    /// The stream (named) can take no more entries: an operator must
    /// delete it.
    Exhausted(String),
}

impl PublishError {
    /// One word for the grant line (`bus=down`; `bus=published` when
    /// it reached the engine).
    pub fn word(&self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::TimedOut => "timeout",
            Self::Busy => "busy",
            Self::Failed(_) => "failed",
            Self::Exhausted(_) => "exhausted",
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Down => f.write_str("the engine is not connected"),
            Self::TimedOut => f.write_str("the engine did not answer in time (bus_timeout)"),
            Self::Busy => write!(f, "too many publications wait for the engine already"),
            Self::Failed(why) => write!(f, "the engine failed: {why}"),
            Self::Exhausted(events) => write!(
                f,
                "the stream's ids are exhausted (an entry has the last possible id): an \
                 operator must delete {events} (DEL {events}); it is made anew by the next \
                 publication"
            ),
        }
    }
}

impl std::error::Error for PublishError {}

/// The publisher's counts since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishCounts {
    pub published: u64,
    /// Refused by the engine, or the connection failed under it.
    pub failed: u64,
    pub timed_out: u64,
    pub refused_busy: u64,
    /// Not tried: the link was down.
    pub down: u64,
    /// Refused because the stream's ids are exhausted.
    pub exhausted: u64,
}

impl fmt::Display for PublishCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published={} failed={} timed_out={} refused_busy={} down={} exhausted={}",
            self.published,
            self.failed,
            self.timed_out,
            self.refused_busy,
            self.down,
            self.exhausted
        )
    }
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    refused_busy: AtomicU64,
    down: AtomicU64,
    exhausted: AtomicU64,
}

/// Publishes this host's grants and revokes.
pub struct Publisher {
    link: Link,
    settings: PublisherSettings,
    in_flight: Semaphore,
    counters: Counters,
    health: Mutex<Health>,
}

impl Publisher {
    pub fn new(link: Link, settings: PublisherSettings) -> Self {
        Self {
            link,
            in_flight: Semaphore::new(settings.max_in_flight),
            settings,
            counters: Counters::default(),
            health: Mutex::new(Health::default()),
        }
    }

    /// A publisher for `keys` (with a bus), its link kept up by a task
    /// until `stop`; the password file is read now. Call inside the
    /// runtime.
    pub fn start(keys: &BusKeys, role: &'static str, stop: CancellationToken) -> Result<Self> {
        let link_settings = link_settings(keys, role)?.context("no bus configured")?;
        let link = Link::new(link_settings)?;
        tokio::spawn(link.clone().keep(stop));
        Ok(Self::new(link, PublisherSettings::from_keys(keys, role)?))
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    pub fn settings(&self) -> &PublisherSettings {
        &self.settings
    }

    /// Waits up to `within` for the link to connect; true if it did.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let never = CancellationToken::new();
        tokio::time::timeout(within, self.link.wait_connected(&never))
            .await
            .is_ok_and(|c| c.is_some())
    }

    /// Publishes a grant of `addr` for `lifetime` from now.
    pub async fn grant(&self, addr: IpAddr, lifetime: Duration) -> Result<(), PublishError> {
        let now = self.link.clock().now_ms();
        self.publish(&Event {
            op: Op::Grant {
                expires_ms: expiry::expiry(now, lifetime),
            },
            addr,
            issued_ms: now,
            origin: self.settings.origin.clone(),
        })
        .await
    }

    /// Publishes that `addr`'s grant is taken away.
    pub async fn revoke(&self, addr: IpAddr) -> Result<(), PublishError> {
        self.publish(&Event {
            op: Op::Revoke,
            addr,
            issued_ms: self.link.clock().now_ms(),
            origin: self.settings.origin.clone(),
        })
        .await
    }

    /// Publishes `event`: its key and its stream entry, in one
    /// transaction. Ends within `bus_timeout` (at once when it cannot be
    /// tried); counted and logged as the module says.
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let outcome = self.try_publish(event).await;
        let counter = match &outcome {
            Ok(()) => &self.counters.published,
            Err(PublishError::Down) => &self.counters.down,
            Err(PublishError::TimedOut) => &self.counters.timed_out,
            Err(PublishError::Busy) => &self.counters.refused_busy,
            Err(PublishError::Failed(_)) => &self.counters.failed,
            Err(PublishError::Exhausted(_)) => &self.counters.exhausted,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.log(event, &outcome);
        outcome
    }

    async fn try_publish(&self, event: &Event) -> Result<(), PublishError> {
        let Ok(_waiting) = self.in_flight.try_acquire() else {
            return Err(PublishError::Busy);
        };
        let Some(mut connection) = self.link.connection() else {
            return Err(PublishError::Down);
        };
        let transaction = transaction(&self.settings.names, self.settings.stream_length, event);
        let sent = transaction.query_async::<()>(&mut connection);
        // The connection has its own response timeout (the same); this
        // one also bounds a send that cannot go out.
        match tokio::time::timeout(self.settings.timeout, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.link.failed(&e);
                if e.is_timeout() {
                    Err(PublishError::TimedOut)
                } else if is_exhausted(&e) {
                    Err(PublishError::Exhausted(self.settings.names.events()))
                } else {
                    // The engine's words: escaped, so that they cannot
                    // forge a log line.
                    Err(PublishError::Failed(shorten(&e.to_string(), LONGEST_ERROR)))
                }
            }
            Err(_elapsed) => {
                // As the connection's own timeout would: a connection
                // that answers nothing is made anew.
                let timed_out = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer within bus_timeout",
                );
                self.link.failed(&redis::RedisError::from(timed_out));
                Err(PublishError::TimedOut)
            }
        }
    }

    fn log(&self, event: &Event, outcome: &Result<(), PublishError>) {
        let role = self.settings.role;
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(()) => {
                if let Some(line) = health.succeeded(Instant::now()) {
                    info!("bus {role}: {line}");
                }
            }
            Err(e) => {
                debug!(
                    "bus {role}: {} of {} not published: {e}",
                    op_name(event.op),
                    event.addr
                );
                if let Some(line) = health.failed(e, Instant::now()) {
                    warn!("bus {role}: {line}");
                }
            }
        }
    }

    /// The counts since the start.
    pub fn counts(&self) -> PublishCounts {
        let c = &self.counters;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        PublishCounts {
            published: get(&c.published),
            failed: get(&c.failed),
            timed_out: get(&c.timed_out),
            refused_busy: get(&c.refused_busy),
            down: get(&c.down),
            exhausted: get(&c.exhausted),
        }
    }
}

/// True if `error` is the engine's refusal of an XADD to a stream whose
/// last id is the last possible one (Redis's and Valkey's words).
fn is_exhausted(error: &redis::RedisError) -> bool {
    error.to_string().contains("exhausted the last possible ID")
}

/// The link's settings for a publisher of `keys` (a command may take
/// `bus_timeout`): `None` without a bus; see [`LinkSettings::from_keys`].
pub fn link_settings(keys: &BusKeys, role: &'static str) -> Result<Option<LinkSettings>> {
    Ok(LinkSettings::from_keys(keys, keys.bus_timeout, role)?)
}

/// The transaction that publishes `event`.
pub fn transaction(names: &Names, stream_length: u64, event: &Event) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    let key = names.grant(event.addr);
    match event.op {
        // The value is the expiry too, so that an edge loading the keys
        // reads it in one GET (PTTL checks it). The engine expires the
        // key after the grant's lifetime on its own clock (PX, not PXAT
        // at the expiry): a publisher whose clock is off, and could not
        // read the engine's (bus/clock.rs), cannot make a key outlive its
        // grant (attack review F7).
        Op::Grant { expires_ms } => pipe
            .cmd("SET")
            .arg(&key)
            .arg(expires_ms)
            .arg("PX")
            .arg(expires_ms.saturating_sub(event.issued_ms).max(1))
            .ignore(),
        Op::Revoke => pipe.cmd("DEL").arg(&key).ignore(),
    };
    let add = pipe
        .cmd("XADD")
        .arg(names.events())
        .arg("MAXLEN")
        .arg("~")
        .arg(stream_length)
        .arg("*");
    for (field, value) in event.fields() {
        add.arg(field).arg(value);
    }
    add.ignore();
    pipe
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Grant { .. } => "grant",
        Op::Revoke => "revoke",
    }
}

/// Whether publishing works, for the log: a line when it starts failing
/// and one when it works again, not one per login; a new spell of
/// failures soon after a logged one is not logged again (its failures
/// are told with the next line that is).
#[derive(Debug, Default)]
struct Health {
    /// The failures of the spell under way, if publishing fails now.
    failing: Option<Spell>,
    /// When a failure was last logged.
    last_logged: Option<Instant>,
    /// Failures of spells that were not logged.
    untold: u64,
    /// The stream's exhaustion was said, and no publication has
    /// succeeded since.
    exhausted: bool,
}

#[derive(Debug)]
struct Spell {
    started: Instant,
    failures: u64,
    logged: bool,
}

impl Health {
    /// A publication failed at `now`: the line to warn with, if any.
    fn failed(&mut self, error: &PublishError, now: Instant) -> Option<String> {
        // Said when it starts, even within a spell or soon after another
        // line: nothing but an operator mends it.
        let exhausted_now = matches!(error, PublishError::Exhausted(_))
            && !std::mem::replace(&mut self.exhausted, true);
        if let Some(spell) = &mut self.failing {
            spell.failures += 1;
            if !exhausted_now {
                return None;
            }
            spell.logged = true;
        } else {
            let quiet = !exhausted_now
                && self
                    .last_logged
                    .is_some_and(|at| now.saturating_duration_since(at) < QUIET_AFTER_LOGGED);
            self.failing = Some(Spell {
                started: now,
                failures: 1,
                logged: !quiet,
            });
            if quiet {
                return None;
            }
        }
        self.last_logged = Some(now);
        let untold = std::mem::take(&mut self.untold);
        let before = match untold {
            0 => String::new(),
            n => format!(" ({n} more failed in short spells since the last such line)"),
        };
        Some(format!(
            "publishing fails: {error}; logins go on, but what they grant does not reach the \
             other hosts until the bus works again{before}"
        ))
    }

    /// A publication succeeded at `now`: the line to say so with, if any.
    fn succeeded(&mut self, now: Instant) -> Option<String> {
        self.exhausted = false;
        let spell = self.failing.take()?;
        if !spell.logged {
            self.untold += spell.failures;
            return None;
        }
        Some(format!(
            "publishing works again; {} publication(s) failed in {:.1}s",
            spell.failures,
            now.saturating_duration_since(spell.started).as_secs_f64()
        ))
    }
}

#[cfg(test)]
#[path = "publisher_tests.rs"]
mod tests;
