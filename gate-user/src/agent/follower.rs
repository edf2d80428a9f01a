//! The follower: reads the engine and writes the local grant map.
//!
//! On each connection it asks XINFO STREAM where the stream stands. If
//! it has no position, or the stream no longer holds what follows its
//! position (bus/follow.rs), it first loads every grant from the keys:
//! it notes the stream's last id *before* the SCAN, so that what is
//! published during the load is read again from the stream afterwards
//! (applying an entry twice changes nothing). Then it follows the stream
//! with XREAD BLOCK from its position, applying the entries in order, and
//! writes the position to disk (bus/state.rs) at most once a second while
//! entries flow, at once when the stream goes quiet.
//!
//! A full load, once needed, stays needed until one ends: the need is
//! written beside the position at once (`full-load-pending`) and taken
//! off only when a load is done, so a load that failed half-way (the
//! connection lost, a bad reply, the map refusing) or that a restart cut
//! short is done first, whatever the position has moved to meanwhile.
//!
//! Nothing the engine sends can stop it: a malformed entry or key is
//! skipped and counted (logged within a budget); a reply of the wrong
//! shape, an error or a lost connection ends only the current round,
//! which starts again after a pause (the link reconnects by itself). What
//! it reads is bounded: at most [`BATCH`] entries or keys at once, key
//! values cut at [`LONGEST_VALUE`] + 1 octets (GETRANGE). After a read
//! that timed out, one entry is read, on a connection of its own, within
//! [`SLOW_READ`]: a huge entry over a slow link arrives; one that does
//! not even then is named in the log and the status (attack review bus2
//! F3). A reconnect checks a known position with the witness, not with
//! XINFO STREAM, which answers the first and last entries whole. A map write
//! that fails (the gate is being repaired) stops the round before that
//! entry, so it is applied when the round starts again.
//!
//! A position holds only for the grant maps it was applied to
//! (bus/map_identity.rs): they are named beside it, and when the maps the
//! agent writes to are others (at start: a reboot, the gate attached
//! anew; while it runs: the watch moved it to the gate's new maps,
//! serve/watch.rs), every grant is loaded from the keys, as for a
//! position trimmed away. While it follows, that is seen after each read
//! (within one blocking read, [`BLOCK`]).
//!
//! Every verdict passes the revoke tombstones (bus/tombstones.rs) before
//! it is applied: a grant issued before a revoke applied in the last
//! window is not, whatever the engine holds again; they are written
//! beside the position, before it.

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use log::{debug, info, warn};
use pop3::grant_log::GRANT_LOG_TARGET;
use redis::{aio::ConnectionLike, aio::MultiplexedConnection, Value};
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{
        clock::wall_ms,
        event::Event,
        follow::{
            full_load_reason, ids_exhausted, judge, judge_key, shorten, stuck_entry_text,
            stuck_info_text, HeadCheck, HeadWatch, KeyVerdict, PositionKeeper, ReadSize, Verdict,
            LONGEST_VALUE, SLOW_READ,
        },
        link::Link,
        map_identity::{self, MapIdentity},
        names::Names,
        state::{self, AgentStatus, SavedPosition},
        stream::{self, BadReply, RawEntry, StreamId, StreamInfo},
        tombstones::{self, Issued, Tombstones},
    },
    policy::log_budget::LogBudget,
    serve::GateGrantSink,
};

use super::grant_lines::{self, GrantLines};

/// Entries per XREAD (at most: see [`ReadSize`]), keys per SCAN: what
/// one reply holds, which the redis crate reads whole, however large
/// (attack review; the unit's MemoryMax= bounds the rest).
pub const BATCH: usize = 100;
/// How long one XREAD waits for an entry.
pub const BLOCK: Duration = crate::bus::link::LONGEST_BLOCK;
/// The status file is rewritten at least this often.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// The pause after a failed round, doubling up to the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
/// SCAN calls one full load may take: a million keys and more at
/// [`BATCH`] a call; an engine whose cursor never comes back to 0 ends
/// the load with an error.
const MOST_SCANS: u64 = 1_000_000;
/// Why a load is needed when the position file said one was pending.
const PENDING_AT_START: &str = "a full load was pending when the agent stopped";
/// Why a load is needed when the witness (bus/follow.rs) is gone.
const TRIMMED: &str = "the stream was trimmed past the position";

/// Why a round ended.
#[derive(Debug)]
enum RoundError {
    /// The engine answered an error, or the connection failed.
    Engine(redis::RedisError),
    /// The engine answered something that is not Redis's reply.
    Reply(BadReply),
    /// Writing the local map failed.
    Map(anyhow::Error),
    /// Even a slow read (bus/follow.rs [`SLOW_READ`], on a connection of
    /// its own) did not arrive: what to do about it.
    Stuck(String),
}

impl std::fmt::Display for RoundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundError::Engine(e) => write!(f, "the engine: {e}"),
            RoundError::Reply(e) => write!(f, "the engine's reply: {e}"),
            RoundError::Map(e) => write!(f, "the gate's map: {e:#}"),
            RoundError::Stuck(text) => f.write_str(text),
        }
    }
}

impl From<redis::RedisError> for RoundError {
    fn from(e: redis::RedisError) -> Self {
        RoundError::Engine(e)
    }
}

impl From<BadReply> for RoundError {
    fn from(e: BadReply) -> Self {
        RoundError::Reply(e)
    }
}

/// Where the follower keeps its position and status.
pub struct Files {
    pub position: std::path::PathBuf,
    pub status: std::path::PathBuf,
}

pub struct Follower {
    link: Link,
    names: Names,
    events: String,
    grants: Arc<GateGrantSink>,
    files: Files,
    position: Option<StreamId>,
    keeper: PositionKeeper,
    /// Why the grants must be loaded from the keys, until a load ends
    /// (written beside the position).
    load_pending: Option<&'static str>,
    /// The grant maps the position holds for: those written to since
    /// the last load began (or since the saved position, if they are the
    /// same).
    fed: Option<MapIdentity>,
    /// How reads are checked for entries trimmed unread.
    head: HeadWatch,
    /// The stream's last id as XINFO STREAM last said (`None`: no
    /// stream, or not asked yet).
    last_generated: Option<StreamId>,
    /// The stream's ids are exhausted (said in the log once per change).
    exhausted: bool,
    /// The engine refuses XRANGE (said in the log once per change).
    xrange_refused: bool,
    status: AgentStatus,
    status_written: Option<Instant>,
    /// The follower's own last error (the link keeps its own).
    round_error: Option<String>,
    /// The error logged last: the same one again goes to debug.
    logged_error: Option<String>,
    /// A round applied something since the last failure: the next pause
    /// starts short again.
    progressed: bool,
    rejected_lines: LogBudget,
    /// The state files cannot be written (a full disk, say).
    file_lines: LogBudget,
    /// The grant lines (`grant source=bus ...`), within their budget.
    grant_lines: GrantLines,
    /// How many entries a read asks for.
    read_size: ReadSize,
    /// XINFO STREAM timed out: the next goes on a connection of its own
    /// and may take [`SLOW_READ`].
    info_slow: bool,
    /// The revokes applied in the last window.
    tombstones: Tombstones,
    /// Where the status goes each time it is written (systemd's status
    /// line), if anywhere.
    shown: Option<tokio::sync::watch::Sender<AgentStatus>>,
}

impl Follower {
    pub fn new(
        link: Link,
        names: Names,
        grants: Arc<GateGrantSink>,
        files: Files,
        saved: Option<SavedPosition>,
        bus: String,
    ) -> Self {
        let events = names.events();
        // Kept whatever the maps: a revoke holds for any of them.
        let (tombstones, trouble) = Tombstones::load(tombstones::file_beside(&files.position));
        if let Some(trouble) = trouble {
            warn!("bus agent: revoke tombstones: {trouble}");
        }
        let fed = maps_of(&grants);
        if fed.is_none() {
            warn!(
                "bus agent: {}: every start loads every grant from the keys",
                map_identity::UNKNOWN
            );
        }
        let load_pending = saved.and_then(|saved| {
            let Some(why) = map_identity::why_load(saved.fed, fed) else {
                return saved.load_pending.then_some(PENDING_AT_START);
            };
            match (saved.fed, fed) {
                (Some(was), Some(now)) => info!(
                    "bus agent: the position {} was applied to the grant maps of {was}; the \
                     gate's are {now}",
                    saved.position
                ),
                _ => info!("bus agent: {why}"),
            }
            Some(why)
        });
        Self {
            link,
            names,
            events,
            grants,
            files,
            position: saved.map(|s| s.position),
            keeper: PositionKeeper::default(),
            load_pending,
            fed,
            head: HeadWatch::default(),
            last_generated: None,
            exhausted: false,
            xrange_refused: false,
            status: AgentStatus {
                pid: std::process::id(),
                started_ms: wall_ms(),
                bus,
                ..AgentStatus::default()
            },
            status_written: None,
            round_error: None,
            logged_error: None,
            progressed: false,
            rejected_lines: LogBudget::new("bus agent: skipped entry", 10, Duration::from_secs(60)),
            file_lines: LogBudget::new("bus agent: state file", 2, Duration::from_secs(60)),
            grant_lines: GrantLines::default(),
            read_size: ReadSize::new(BATCH),
            info_slow: false,
            tombstones,
            shown: None,
        }
    }

    /// Each status written to the file is also sent to `shown`.
    pub fn showing_status_in(mut self, shown: tokio::sync::watch::Sender<AgentStatus>) -> Self {
        self.shown = Some(shown);
        self
    }

    /// Follows until `stop`, then writes the position and the status.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut pause = FIRST_PAUSE;
        loop {
            self.note_new_maps();
            self.write_status(true);
            let connection = tokio::select! {
                connection = self.link.wait_connected(&stop) => connection,
                () = tokio::time::sleep(STATUS_INTERVAL) => continue,
            };
            let Some(mut connection) = connection else {
                break;
            };
            self.progressed = false;
            // Connected: said at once, not after the first read.
            self.write_status(true);
            match self.round(&mut connection, &stop).await {
                Ok(()) => break,
                Err(e) => {
                    match &e {
                        RoundError::Engine(e) => {
                            self.link.failed(e);
                            if e.is_timeout() {
                                self.read_size.timed_out();
                            }
                        }
                        // On a connection of its own: the shared one is
                        // fine. The next read is slow again.
                        RoundError::Stuck(_) => self.read_size.timed_out(),
                        RoundError::Reply(_) | RoundError::Map(_) => {}
                    }
                    if self.progressed {
                        pause = FIRST_PAUSE;
                    }
                    self.note_error(&e, pause);
                    self.save_position(true);
                    self.write_status(true);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
            }
        }
        self.save_position(true);
        self.write_status(true);
    }

    /// One connection's work: load if needed, then follow. `Ok` on stop.
    async fn round(
        &mut self,
        connection: &mut MultiplexedConnection,
        stop: &CancellationToken,
    ) -> Result<(), RoundError> {
        loop {
            // `None`: not asked, the witness showed the position fresh.
            let info = match self.fresh_at_connect(connection).await? {
                true => None,
                false => Some(self.stream_info(connection).await?),
            };
            if let Some(reason) =
                info.and_then(|info| full_load_reason(self.position, info.as_ref()))
            {
                self.must_load(reason);
            }
            self.note_new_maps();
            if let Some(reason) = self.load_pending {
                // Its last id before the SCAN.
                let info = match info {
                    Some(info) => info,
                    None => self.stream_info(connection).await?,
                };
                let from = info.map_or(StreamId::ZERO, |i| i.last_generated);
                info!("bus agent: loading every grant from the engine's keys ({reason})");
                // Maps replaced from now on are seen after the load, and
                // loaded again.
                self.fed = maps_of(&self.grants);
                if !self.full_load(connection, stop).await? {
                    return Ok(());
                }
                self.position = Some(from);
                self.load_pending = None;
                self.head.loaded();
                self.status.full_loads += 1;
                self.status.last_full_load = Some(reason.to_owned());
                self.save_position(true);
                self.note_exhausted();
                self.status.lag_ms = Some(lag(self.position, info.as_ref()));
                // Loaded: said at once, not after the first read.
                self.write_status(true);
                info!("bus agent: grants loaded; following the stream from {from}");
            } else if let Some(position) = self.position {
                info!("bus agent: following the stream from {position}");
                if let Some(info) = info {
                    self.status.lag_ms = Some(lag(self.position, info.as_ref()));
                }
            }
            // An error that made the next read or XINFO slow (the entry
            // stuck) is said until one is answered.
            if !self.read_size.slow() && !self.info_slow {
                self.clear_error();
            }
            match self.follow(connection, stop).await? {
                None => return Ok(()),
                // The stream no longer holds what followed the position
                // the last read started from: load again.
                Some(reason) => self.must_load(reason),
            }
        }
    }

    /// If the grants go to other maps than those the position holds for
    /// (the watch moved them to the gate's new ones), they must all be
    /// loaded from the keys. True if so.
    fn note_new_maps(&mut self) -> bool {
        let now = maps_of(&self.grants);
        if now == self.fed {
            return false;
        }
        match (self.fed, now) {
            (Some(was), Some(now)) => warn!(
                "bus agent: the grants go to new maps ({now}, were {was}): loading every \
                 grant from the keys into them"
            ),
            _ => warn!("bus agent: the grants go to maps that cannot be named"),
        }
        self.fed = now;
        self.must_load(map_identity::REPLACED);
        true
    }

    /// The grants must be loaded from the keys (`reason`): said on disk at
    /// once, so that it is done first until a load ends, also after a
    /// failed load or a restart.
    fn must_load(&mut self, reason: &'static str) {
        if self.load_pending.replace(reason).is_none() {
            self.save_position(true);
            self.write_status(true);
        }
    }

    /// Follows the stream. `Ok(None)` on stop; `Ok(Some(why))` when the
    /// grants must be loaded from the keys again.
    ///
    /// After every read, with entries or without, the stream is looked at
    /// as of the position the read started from (bus/follow.rs
    /// [`HeadWatch`]: a small entry read before, or XINFO STREAM about
    /// once a minute): entries trimmed between that position and what the
    /// read gave (a revoke among them) are caught here, whatever the
    /// batch's size; so is a stream deleted, made anew, or whose last id
    /// fell behind the position (an XREAD from there would wait for
    /// good). The entries read are applied first, so a grant waits for no
    /// extra round trip; the full load that follows puts right whatever
    /// they missed.
    async fn follow(
        &mut self,
        connection: &mut MultiplexedConnection,
        stop: &CancellationToken,
    ) -> Result<Option<&'static str>, RoundError> {
        loop {
            let position = self.position.unwrap_or(StreamId::ZERO);
            let block = self.keeper.block(self.saved(), Instant::now(), BLOCK);
            let mut command = redis::cmd("XREAD");
            command
                .arg("COUNT")
                .arg(self.read_size.count())
                .arg("BLOCK")
                .arg(block.as_millis().max(1) as u64)
                .arg("STREAMS")
                .arg(&self.events)
                .arg(position.to_string());
            // After a read that timed out, one entry that may take
            // SLOW_READ, on a connection of its own: a huge entry over a
            // slow link gets through, and the shared connection is not
            // held, nor torn down (attack review bus2 F3).
            let slow = self.read_size.slow();
            let link = self.link.clone();
            let read = async {
                if slow {
                    let mut apart = link.connection_apart(block + SLOW_READ).await?;
                    command.query_async::<Value>(&mut apart).await
                } else {
                    let mut reading = link.for_blocking_read(connection, block);
                    command.query_async::<Value>(&mut reading).await
                }
            };
            let reply = tokio::select! {
                () = stop.cancelled() => return Ok(None),
                reply = read => match reply {
                    Ok(reply) => reply,
                    Err(e) if slow && e.is_timeout() => {
                        return Err(RoundError::Stuck(stuck_entry_text(
                            &self.events,
                            position,
                            SLOW_READ,
                        )))
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            let entries = stream::parse_xread(reply, &self.events)?;
            let full = entries.len() >= self.read_size.count();
            self.read_size.answered();
            if slow && !self.info_slow {
                self.clear_error();
            }
            let quiet = entries.is_empty();
            let read_from = self.position;
            // Decided before the entries are taken in: the witness must
            // be at or before where the read started.
            let check = self.head.check(Instant::now(), !quiet);
            self.apply_entries(entries)?;
            self.note_exhausted();
            if self.note_new_maps() {
                return Ok(Some(map_identity::REPLACED));
            }
            if let Some(reason) = self.check_head(connection, check, read_from).await? {
                return Ok(Some(reason));
            }
            self.status.lag_ms = Some(if full {
                // More wait: as far behind as the engine's time is ahead
                // of the last entry read.
                self.link
                    .clock()
                    .now_ms()
                    .saturating_sub(self.position.map_or(0, |p| p.ms))
            } else {
                0
            });
            self.save_position(quiet);
            self.write_status(false);
        }
    }

    /// Checks, as `check` says, that the stream still holds what followed
    /// `read_from`: `Some(why)` if it does not (or cannot tell).
    async fn check_head(
        &mut self,
        connection: &mut MultiplexedConnection,
        check: HeadCheck,
        read_from: Option<StreamId>,
    ) -> Result<Option<&'static str>, RoundError> {
        let witness = match check {
            HeadCheck::Nothing => return Ok(None),
            HeadCheck::Witness(witness) => witness,
            HeadCheck::Info => {
                let info = self.stream_info(connection).await?;
                return Ok(full_load_reason(read_from, info.as_ref()));
            }
        };
        let reply = redis::cmd("XRANGE")
            .arg(&self.events)
            .arg(witness.to_string())
            .arg(witness.to_string())
            .query_async::<Value>(connection)
            .await;
        match reply {
            Ok(reply) => {
                if std::mem::take(&mut self.xrange_refused) {
                    info!("bus agent: the engine answers XRANGE again");
                }
                self.head.accepted();
                let there = stream::parse_xrange(reply)?
                    .iter()
                    .any(|entry| entry.id == witness);
                Ok((!there).then_some(TRIMMED))
            }
            // An engine that refuses it (an ACL from before the agent
            // asked it): XINFO STREAM as before, XRANGE tried again later.
            Err(e) if is_refusal(&e) => {
                if !std::mem::replace(&mut self.xrange_refused, true) {
                    warn!(
                        "bus agent: the engine refuses XRANGE ({}); the stream is looked at \
                         with XINFO STREAM after every read instead, which reads its first \
                         entry whole: allow +xrange to the edges' user \
                         (deploy/redis-acl.conf)",
                        shorten(&e.to_string(), 200)
                    );
                }
                self.head.refused(Instant::now());
                let info = self.stream_info(connection).await?;
                Ok(full_load_reason(read_from, info.as_ref()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// True if, at a connection, the position is known and fresh: no
    /// full load pending, and the witness is still there while XINFO
    /// STREAM is not due (bus/follow.rs [`HeadWatch::at_connect`]). Then
    /// XINFO is not asked: a reconnect after a read that timed out on a
    /// huge entry would read it again if it is the stream's first or
    /// last (attack review bus2 F3). A witness gone means a full load.
    async fn fresh_at_connect(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> Result<bool, RoundError> {
        if self.position.is_none() || self.load_pending.is_some() {
            return Ok(false);
        }
        let check = self.head.at_connect(Instant::now());
        if check == HeadCheck::Info {
            return Ok(false);
        }
        match self.check_head(connection, check, self.position).await? {
            None => Ok(true),
            Some(reason) => {
                self.must_load(reason);
                Ok(false)
            }
        }
    }

    /// XINFO STREAM (it answers the first and the last entry whole: not
    /// after every read, bus/follow.rs [`HeadWatch`]). After one that
    /// timed out, on a connection of its own, within [`SLOW_READ`].
    async fn stream_info(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> Result<Option<StreamInfo>, RoundError> {
        let mut command = redis::cmd("XINFO");
        command.arg("STREAM").arg(&self.events);
        let slow = self.info_slow;
        let reply = if slow {
            let mut apart = self.link.connection_apart(SLOW_READ).await?;
            command.query_async::<Value>(&mut apart).await
        } else {
            command.query_async::<Value>(connection).await
        };
        match &reply {
            Err(e) if e.is_timeout() && slow => {
                // Not asked again before INFO_EVERY: the witness checks
                // the reads meanwhile, as between two XINFOs.
                self.head.info_read(Instant::now());
                return Err(RoundError::Stuck(stuck_info_text(&self.events, SLOW_READ)));
            }
            Err(e) if e.is_timeout() => self.info_slow = true,
            Err(_) => {}
            Ok(_) => {
                if std::mem::take(&mut self.info_slow) && !self.read_size.slow() {
                    self.clear_error();
                }
            }
        }
        let info = match reply {
            Ok(reply) => {
                let info = stream::parse_xinfo(reply)?;
                self.link.clock().note_entry_time(info.last_generated.ms);
                Some(info)
            }
            // Nothing published yet (or the engine lost it).
            Err(e)
                if e.kind() == redis::ErrorKind::ResponseError
                    && e.to_string().contains("no such key") =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        self.head.info_read(Instant::now());
        self.last_generated = info.map(|i| i.last_generated);
        self.note_exhausted();
        Ok(info)
    }

    /// Says once per change whether the stream's ids are exhausted: no
    /// publisher can add to it, so nothing reaches this edge through it.
    fn note_exhausted(&mut self) {
        let exhausted = ids_exhausted(self.position, self.last_generated);
        if exhausted == std::mem::replace(&mut self.exhausted, exhausted) {
            return;
        }
        if exhausted {
            warn!(
                "bus agent: {}; until then no grant or revoke reaches this edge (it keeps \
                 what its map holds), and the publishers' logins say bus=exhausted",
                self.exhausted_text()
            );
        } else {
            info!("bus agent: the stream's ids are no longer exhausted");
        }
        self.write_status(true);
    }

    fn exhausted_text(&self) -> String {
        format!(
            "the stream's ids are exhausted (an entry has the last possible id, {}): an \
             operator must delete {} (DEL), the publishers then make it anew",
            StreamId::MAX,
            self.events
        )
    }

    /// Applies the entries in order, moving the position past each one
    /// applied or skipped. Stops before an entry the map refused.
    fn apply_entries(&mut self, entries: Vec<RawEntry>) -> Result<(), RoundError> {
        if entries.is_empty() {
            return Ok(());
        }
        let window = self.window()?;
        for entry in entries {
            if self.position.is_some_and(|p| entry.id <= p) {
                continue;
            }
            self.link.clock().note_entry_time(entry.id.ms);
            let size = entry.fields.as_ref().ok().map(|fields| {
                fields
                    .iter()
                    .map(|(name, value)| name.len() + value.len())
                    .sum()
            });
            let judged = entry
                .fields
                .and_then(|fields| Event::parse(&fields).map_err(|e| e.0))
                .and_then(|event| {
                    judge(&event, entry.id.ms, self.link.clock().now_ms(), window)
                        .map(|v| (v, event.origin))
                });
            match judged {
                Ok((verdict, origin)) => {
                    if let Some(verdict) = self.screened(verdict, Issued::Entry(entry.id), window) {
                        self.apply(verdict, grant_lines::From::Entry { origin: &origin })?
                    }
                }
                Err(why) => {
                    self.status.entries_rejected += 1;
                    if self.rejected_lines.allows() {
                        warn!(
                            "bus agent: entry {} skipped: {}",
                            entry.id,
                            shorten(&why, 200)
                        );
                    }
                }
            }
            self.position = Some(entry.id);
            self.head.read(entry.id, size);
            self.progressed = true;
        }
        Ok(())
    }

    fn apply(&mut self, verdict: Verdict, from: grant_lines::From<'_>) -> Result<(), RoundError> {
        let written = match verdict {
            Verdict::Grant(addr, lifetime) => {
                self.grants.grant_with_left(addr, lifetime).map(|()| {
                    debug!("bus agent: granted {addr} for {lifetime:?}");
                    self.status.grants_applied += 1;
                    let lines =
                        self.grant_lines
                            .grant(Instant::now(), wall_ms(), addr, from, lifetime);
                    for line in lines {
                        info!(target: GRANT_LOG_TARGET, "{line}");
                    }
                })
            }
            Verdict::Revoke(addr) => self.grants.revoke(addr).map(|had| {
                debug!("bus agent: revoked {addr} (it had a grant: {had})");
                self.status.revokes_applied += 1;
                for line in self.grant_lines.revoke(Instant::now(), addr, from) {
                    info!(target: GRANT_LOG_TARGET, "{line}");
                }
            }),
            Verdict::Expired => {
                self.status.expired_skipped += 1;
                Ok(())
            }
        };
        written.map_err(|e| {
            self.status.apply_failures += 1;
            RoundError::Map(e)
        })
    }

    /// `verdict` as the revoke tombstones leave it; one they hold back
    /// is counted.
    fn screened(&mut self, verdict: Verdict, issued: Issued, window: Duration) -> Option<Verdict> {
        let now = self.link.clock().now_ms();
        if let Some(trouble) = self.tombstones.settle(now) {
            warn!("bus agent: revoke tombstones: {trouble}");
        }
        let screened = self.tombstones.screen(verdict, issued, now, window);
        if screened.is_none() {
            self.status.revoked_skipped += 1;
            debug!("bus agent: {verdict:?} from {issued:?} held back: revoked since");
        }
        screened
    }

    /// The gate's window now: the longest a grant is applied for.
    fn window(&self) -> Result<Duration, RoundError> {
        self.grants
            .with_maps(|maps| maps.settings())
            .map(|settings| Duration::from_nanos(settings.window_ns))
            .map_err(RoundError::Map)
    }

    /// Loads every grant key, then takes away the grants of the map that
    /// no key holds (revoked while the agent could not see the revoke).
    /// `Ok(false)` on stop.
    async fn full_load(
        &mut self,
        connection: &mut MultiplexedConnection,
        stop: &CancellationToken,
    ) -> Result<bool, RoundError> {
        let started = Instant::now();
        let mut seen = HashSet::new();
        let pattern = self.names.grant_pattern();
        let mut cursor = 0u64;
        for _ in 0..MOST_SCANS {
            let mut command = redis::cmd("SCAN");
            command
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH);
            let scan = command.query_async::<Value>(connection);
            let reply = tokio::select! {
                () = stop.cancelled() => return Ok(false),
                reply = scan => reply?,
            };
            let (next, keys) = stream::parse_scan(reply)?;
            self.load_keys(connection, keys, &mut seen).await?;
            self.write_status(false);
            if next == 0 {
                self.drop_unseen(&seen, started.elapsed())?;
                return Ok(true);
            }
            cursor = next;
        }
        Err(RoundError::Reply(BadReply(format!(
            "SCAN did not end after {MOST_SCANS} calls"
        ))))
    }

    /// Reads and applies one SCAN batch of keys: the first octets of each
    /// value and its PTTL, in one round trip. A key of another type
    /// (GETRANGE answers an error for it) is that key's problem only.
    async fn load_keys(
        &mut self,
        connection: &mut MultiplexedConnection,
        keys: Vec<Vec<u8>>,
        seen: &mut HashSet<IpAddr>,
    ) -> Result<(), RoundError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("GETRANGE").arg(key).arg(0).arg(LONGEST_VALUE);
            pipe.cmd("PTTL").arg(key);
        }
        // Not `query_async`: it turns one command's error into the whole
        // pipeline's.
        let replies = connection
            .req_packed_commands(&pipe, 0, keys.len() * 2)
            .await?;
        if replies.len() != keys.len() * 2 {
            return Err(BadReply(format!(
                "{} replies to {} commands",
                replies.len(),
                keys.len() * 2
            ))
            .into());
        }
        let window = self.window()?;
        for (key, replies) in keys.iter().zip(replies.chunks(2)) {
            let verdict = match (&replies[0], &replies[1]) {
                (value, Value::Int(pttl)) => match stream::octets(value) {
                    Some(value) => judge_key(
                        &self.names,
                        key,
                        value,
                        *pttl,
                        self.link.clock().now_ms(),
                        window,
                    ),
                    None => KeyVerdict::Bad("the key is not a string".into()),
                },
                _ => KeyVerdict::Bad("the key is not a string".into()),
            };
            match verdict {
                KeyVerdict::Apply(verdict, expires_ms) => {
                    // Held back by a tombstone: unseen, so the load takes
                    // away what the map may hold of it.
                    let issued = Issued::Key { expires_ms };
                    if let Some(verdict) = self.screened(verdict, issued, window) {
                        if let Verdict::Grant(addr, _) = verdict {
                            seen.insert(addr);
                        }
                        self.apply(verdict, grant_lines::From::Keys)?;
                    }
                }
                KeyVerdict::Gone => {}
                KeyVerdict::Bad(why) => {
                    self.status.keys_rejected += 1;
                    if self.rejected_lines.allows() {
                        warn!(
                            "bus agent: key {} skipped: {}",
                            shorten(key, 100),
                            shorten(&why, 200)
                        );
                    }
                }
            }
        }
        self.progressed = true;
        Ok(())
    }

    /// The keys are the whole state: a grant of the map that no key held
    /// was revoked (or lapsed) where the agent could not see it (the
    /// stream was trimmed past its position, or it had none). Taken away,
    /// unless it was written since the load began (`since`).
    fn drop_unseen(&mut self, seen: &HashSet<IpAddr>, since: Duration) -> Result<(), RoundError> {
        let local = self
            .grants
            .with_maps(|maps| maps.grants())
            .map_err(RoundError::Map)?;
        let mut dropped = 0;
        for grant in local {
            if seen.contains(&grant.addr) || grant.age < since || !grant.is_fresh() {
                continue;
            }
            if self.grants.revoke(grant.addr).map_err(RoundError::Map)? {
                dropped += 1;
            }
        }
        if dropped > 0 {
            info!("bus agent: {dropped} grant(s) the engine no longer holds taken away");
        }
        self.status.dropped_without_key += dropped;
        Ok(())
    }

    /// Logs a failed round: a new error as a warning, the same again at
    /// debug (the link says itself when the engine is down or back).
    fn note_error(&mut self, e: &RoundError, pause: Duration) {
        let text = shorten(&e.to_string(), 300);
        let link_down = matches!(e, RoundError::Engine(_)) && !self.link.is_up();
        if link_down || self.logged_error.as_deref() == Some(text.as_str()) {
            debug!("bus agent: {text}; again in {pause:?}");
        } else {
            warn!("bus agent: {text}; trying again in {pause:?}");
            self.logged_error = Some(text.clone());
        }
        self.round_error = Some(text);
    }

    fn clear_error(&mut self) {
        if self.logged_error.take().is_some() {
            info!("bus agent: following again");
        }
        self.round_error = None;
    }

    /// What the position file is to hold.
    fn saved(&self) -> Option<SavedPosition> {
        self.position.map(|position| SavedPosition {
            position,
            load_pending: self.load_pending.is_some(),
            fed: self.fed,
        })
    }

    /// Writes the position if it is due (`at_once`: whenever it moved).
    fn save_position(&mut self, at_once: bool) {
        let now = Instant::now();
        let Some(position) = self.saved() else {
            return;
        };
        if !self.keeper.due(Some(position), now, at_once) {
            return;
        }
        // The tombstones first: a position on disk past a revoke whose
        // tombstone is not would lose it at a restart.
        // Not written, the position stays where it was on disk: a restart
        // reads the revokes again (attack review bus2, F8).
        if let Err(e) = self.tombstones.save() {
            self.keeper.failed(now);
            if self.file_lines.allows() {
                warn!(
                    "bus agent: writing the revoke tombstones to {}: {e}; the position is \
                     not written past them",
                    self.tombstones.path().display()
                );
            }
            return;
        }
        match state::write_position(&self.files.position, position) {
            Ok(()) => self.keeper.wrote(position, now),
            Err(e) => {
                self.keeper.failed(now);
                if self.file_lines.allows() {
                    warn!(
                        "bus agent: writing the position to {}: {e}",
                        self.files.position.display()
                    );
                }
            }
        }
    }

    /// Rewrites the status file, at most every [`STATUS_INTERVAL`] unless
    /// `at_once`.
    fn write_status(&mut self, at_once: bool) {
        let now = Instant::now();
        // The link went up or down: said at once.
        let at_once = at_once || self.link.is_up() != self.status.connected;
        if !at_once
            && self
                .status_written
                .is_some_and(|at| now.duration_since(at) < STATUS_INTERVAL)
        {
            return;
        }
        if let Some(line) = self.grant_lines.flush(now) {
            info!(target: GRANT_LOG_TARGET, "{line}");
        }
        self.status.updated_ms = wall_ms();
        self.status.connected = self.link.is_up();
        self.status.clock_skew_ms = self.link.clock().skew_ms();
        self.status.ids_ahead_ignored = self.link.clock().ids_ahead();
        self.status.revoke_tombstones = self.tombstones.len() as u64;
        self.status.position = self.position.map(|p| p.to_string());
        self.status.full_load_pending = self.load_pending.map(str::to_owned);
        self.status.last_error = self
            .round_error
            .clone()
            .or_else(|| self.exhausted.then(|| self.exhausted_text()))
            .or_else(|| self.link.last_error().filter(|_| !self.status.connected));
        if let Some(shown) = &self.shown {
            shown.send_replace(self.status.clone());
        }
        match state::write_status(&self.files.status, &self.status) {
            Ok(()) => self.status_written = Some(now),
            Err(e) => {
                if self.file_lines.allows() {
                    warn!(
                        "bus agent: writing the status to {}: {e}",
                        self.files.status.display()
                    );
                }
            }
        }
    }
}

/// The grant maps `grants` writes to now.
fn maps_of(grants: &GateGrantSink) -> Option<MapIdentity> {
    MapIdentity::on_this_boot(grants.with_maps(|maps| maps.grant_map_ids()))
}

/// True if the engine refused a command (an ACL without it, a proxy
/// that does not know it), rather than failed.
fn is_refusal(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::ResponseError | redis::ErrorKind::ExtensionError
    )
}

/// Milliseconds of entry ids between the position and the stream's last
/// entry.
fn lag(position: Option<StreamId>, info: Option<&StreamInfo>) -> u64 {
    match (position, info) {
        (Some(position), Some(info)) => info.last_generated.ms.saturating_sub(position.ms),
        _ => 0,
    }
}
