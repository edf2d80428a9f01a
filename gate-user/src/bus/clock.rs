//! The engine's clock, the one clock every host on the bus times grants
//! by.
//!
//! A grant's expiry crosses hosts: the publisher writes it, the engine
//! expires its key, every edge turns it into a lifetime on its own gate.
//! Each host's wall clock may be off (a VM restored from a snapshot, an
//! RTC read at boot before NTP stepped the clock): a publisher ahead made
//! its keys live that much longer in the engine, an edge behind replayed
//! long-over grants as fresh (attack review F6, F7). So nobody times a
//! grant by its own wall clock: a link reads the engine's (`TIME`) when it
//! connects and every [`REFRESH`], and carries it forward on this host's
//! CLOCK_BOOTTIME, which no setting of the wall clock moves and which
//! counts time asleep.
//!
//! A reading is the best of [`SAMPLES`] round trips (the shortest, as NTP
//! picks them; none longer than [`LONGEST_ROUND_TRIP_MS`]), made on a
//! connection that waits for nothing else: behind an edge's blocking read
//! an answer waited up to 5 s and the reading was off by half of that
//! (attack review, finding 8).
//!
//! The clock never goes back for judging grants (finding 4): an engine
//! whose clock was stepped back an hour made every entry and key of the
//! last hour look fresh again. Entry ids are the engine's time of each
//! XADD (the engine keeps them rising even when its clock goes back), so
//! the engine's time is at least the newest id seen. A TIME reading
//! behind the time the clock gives (that id, or the last reading carried
//! forward) is taken as the reading all the same, and said once per step
//! of [`STEP_BACK_TOLERANCE_MS`] or more; the time given keeps its lead
//! over it, but the lead wears off at half the pace of the boot clock
//! ([`LEAD_WEARS_OFF_EVERY`]): the clock runs at half speed until it meets
//! TIME, never back. So nothing judged over turns fresh again, while an
//! engine's clock stepped ahead for a while and then put right (attack
//! review bus2, F5) does not leave every edge ahead until it restarts.
//!
//! An entry id more than [`MOST_AHEAD_ID_MS`] ahead of what this host can
//! check it against (the last TIME reading carried forward, or this
//! host's wall clock if later; never the time the clock gives, which ids
//! move) is not taken as the engine's time, but counted and logged
//! (finding 7): one entry written with the id `<now + 1 year>-0` made
//! every grant look over on every edge; and ids each a little ahead of
//! the last must not ratchet the clock on (bus2, F2).
//!
//! An engine that refuses `TIME` (an ACL without `+time`) leaves this
//! host's wall clock, with the newest id seen (within that bound) as a
//! floor, which keeps an edge whose clock is a little behind from taking
//! old grants for fresh ones.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use log::{info, warn};
use redis::Value;

use super::stream::{octets, BadReply};

/// How often a connected link reads the engine's time again.
pub const REFRESH: Duration = Duration::from_secs(60);

/// A skew this large between this host and the engine is logged: the
/// design tolerates a second.
pub const NOTABLE_SKEW_MS: i64 = 1000;

/// TIME round trips per reading: the shortest is kept.
pub const SAMPLES: usize = 4;

/// A TIME sample whose round trip took longer than this is not taken:
/// the engine's answer was made somewhere within it, so its error is up
/// to half of it, here a tenth of the second of skew the design
/// tolerates. An engine further away than that cannot acknowledge a login
/// within `bus_timeout` (250 ms) anyway.
pub const LONGEST_ROUND_TRIP_MS: u64 = 200;

/// A TIME reading this far behind the time the clock gives (the newest
/// entry id seen, or the last reading carried forward) is the engine's
/// clock stepped back (or an earlier step ahead put right), and said.
/// Closer than that it is this host's boot clock drifting a little
/// against the engine's.
pub const STEP_BACK_TOLERANCE_MS: u64 = 1000;

/// While the time given is ahead of TIME carried forward, the lead wears
/// off by one millisecond every this many of the boot clock: the clock
/// runs at half speed until it meets TIME. Never back: a grant or a
/// tombstone judged over stays over. Slow enough that a grant issued
/// before an engine's clock was stepped back lasts, when it is applied
/// again (a full load, a replay), at most twice what was left of it;
/// fast enough that an hour's lead is gone in two (bus2, F5).
pub const LEAD_WEARS_OFF_EVERY: u64 = 2;

/// An entry id further ahead than this of the engine's TIME carried
/// forward (or of this host's wall clock, if that is later) is not taken
/// as the engine's time. Ids taken may put the time grants are judged by
/// ahead, and so shorten every grant, by up to this much past the later
/// of the two: ten seconds of a window of minutes; the bound is never
/// counted from a time an id gave, so ids cannot add up (bus2, F2), and
/// the lead wears off ([`LEAD_WEARS_OFF_EVERY`]). It is ten times the skew the design tolerates, so hosts whose
/// clocks NTP keeps right never see a real id refused; an edge further
/// behind than this has the engine's TIME to go by (`+time`).
pub const MOST_AHEAD_ID_MS: u64 = 10_000;

/// Ids ignored for being ahead are logged at most this often.
const AHEAD_LOG_INTERVAL_MS: u64 = 60_000;

/// The engine's time as last read, carried forward on CLOCK_BOOTTIME.
#[derive(Debug, Default)]
pub struct EngineClock {
    /// For the log: `serve`, `agent`, `cli`.
    role: &'static str,
    state: Mutex<ClockState>,
}

/// One TIME round trip: the engine's answer, and this host's boot clock
/// when the question went out and when the answer came back (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub engine_ms: u64,
    pub sent_boot_ms: u64,
    pub received_boot_ms: u64,
}

impl Sample {
    pub fn round_trip_ms(&self) -> u64 {
        self.received_boot_ms.saturating_sub(self.sent_boot_ms)
    }
}

/// The sample to take: the shortest round trip, if one was no longer
/// than [`LONGEST_ROUND_TRIP_MS`].
pub fn best_sample(samples: &[Sample]) -> Option<Sample> {
    samples
        .iter()
        .filter(|s| s.round_trip_ms() <= LONGEST_ROUND_TRIP_MS)
        .min_by_key(|s| s.round_trip_ms())
        .copied()
}

#[derive(Clone, Copy, Debug, Default)]
struct ClockState {
    /// The engine's time (ms) and this host's boot clock (ms) when it was
    /// last read: always TIME's own answer.
    reading: Option<(u64, u64)>,
    /// With a reading: how far (ms) the time given was ahead of the
    /// reading carried forward, and the boot clock then; it wears off
    /// ([`LEAD_WEARS_OFF_EVERY`]).
    lead: Option<(u64, u64)>,
    /// Without a reading: the newest entry id's time seen (within
    /// [`MOST_AHEAD_ID_MS`] of the wall clock), and the boot clock then.
    floor: Option<(u64, u64)>,
    /// The skew last logged (engine minus this host, ms).
    logged_skew: Option<i64>,
    /// How far TIME was behind (ms) when that was logged last, or
    /// looked at since (it shrinks as the lead wears off).
    logged_behind: Option<u64>,
    /// Entry ids not taken for being too far ahead (each once: the
    /// stream's last id is looked at after every read).
    ids_ahead: u64,
    /// The last of them.
    last_ahead: Option<u64>,
    /// The boot clock when such an id was logged last.
    ids_ahead_logged: Option<u64>,
}

impl EngineClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock whose log lines name `role` (`bus agent: ...`).
    pub fn for_role(role: &'static str) -> Self {
        Self {
            role,
            ..Self::default()
        }
    }

    /// The engine's time now, in milliseconds since the Unix epoch, as
    /// well as this host can tell; never earlier than what it gave
    /// before, once the engine's time was read.
    pub fn now_ms(&self) -> u64 {
        self.state().now_ms(boot_ms(), wall_ms())
    }

    /// Takes the best of `samples` ([`best_sample`]) as the engine's time
    /// now, unless it steps back. False if none was good enough.
    pub fn record(&self, samples: &[Sample]) -> bool {
        let Some(sample) = best_sample(samples) else {
            return false;
        };
        let now_boot = boot_ms();
        let mut state = self.state();
        let lines = [
            state.record(sample, now_boot),
            state.skew_line(wall_ms(), now_boot),
        ];
        drop(state);
        for line in lines.into_iter().flatten() {
            self.log(line);
        }
        true
    }

    /// An entry id's time: the engine's clock read at least that, if it
    /// is not too far ahead.
    pub fn note_entry_time(&self, id_ms: u64) {
        let line = self.state().note_floor(id_ms, boot_ms(), wall_ms());
        if let Some(line) = line {
            self.log(line);
        }
    }

    /// Engine minus this host's wall clock, in ms, if the engine's time
    /// was read.
    pub fn skew_ms(&self) -> Option<i64> {
        self.state().skew(wall_ms(), boot_ms())
    }

    /// How many entry ids were not taken as the engine's time for being
    /// too far ahead.
    pub fn ids_ahead(&self) -> u64 {
        self.state().ids_ahead
    }

    fn log(&self, line: Line) {
        match line {
            Line::Warn(text) => warn!("bus {}: {text}", self.role),
            Line::Info(text) => info!("bus {}: {text}", self.role),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A line for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Line {
    Warn(String),
    Info(String),
}

impl Line {
    #[cfg(test)]
    fn text(&self) -> &str {
        match self {
            Line::Warn(text) | Line::Info(text) => text,
        }
    }
}

/// `(ms, at)` carried forward to the boot clock `boot`.
fn forward((ms, at): (u64, u64), boot: u64) -> u64 {
    ms.saturating_add(boot.saturating_sub(at))
}

impl ClockState {
    /// The lead over TIME left at the boot clock `boot`.
    fn lead_at(&self, boot: u64) -> u64 {
        self.lead.map_or(0, |(lead, at)| {
            lead.saturating_sub(boot.saturating_sub(at) / LEAD_WEARS_OFF_EVERY)
        })
    }

    /// The time now without giving it out: TIME carried forward and what
    /// is left of the lead; before a reading, the wall clock with the
    /// newest id as a floor.
    fn estimate(&self, boot: u64, wall: u64) -> u64 {
        match self.reading {
            Some(reading) => forward(reading, boot).saturating_add(self.lead_at(boot)),
            None => self.floor.map_or(wall, |f| wall.max(forward(f, boot))),
        }
    }

    fn now_ms(&mut self, boot: u64, wall: u64) -> u64 {
        self.estimate(boot, wall)
    }

    /// Takes `sample` (its best one) at the boot clock `now_boot`; the
    /// line to log if it is behind the time given, or agrees again.
    fn record(&mut self, sample: Sample, now_boot: u64) -> Option<Line> {
        // The answer was made somewhere between the question and its
        // answer: half the round trip before it arrived, carried to now.
        let taken = sample
            .engine_ms
            .saturating_add(sample.round_trip_ms() / 2)
            .saturating_add(now_boot.saturating_sub(sample.received_boot_ms));
        // What was given (with a reading) or the newest id (without):
        // not the wall clock, which gave nothing a reading must keep.
        let given = match self.reading {
            Some(_) => Some(self.estimate(now_boot, 0)),
            None => self.floor.map(|f| forward(f, now_boot)),
        };
        self.floor = None;
        // Always TIME's own answer: what ids are checked against.
        self.reading = Some((taken, now_boot));
        let lead = given.map_or(0, |given| given.saturating_sub(taken));
        self.lead = (lead > 0).then_some((lead, now_boot));
        if lead > STEP_BACK_TOLERANCE_MS {
            return self.behind_line(lead);
        }
        self.logged_behind.take().map(|_| {
            Line::Info("the engine's clock agrees again with the time it gave before".to_owned())
        })
    }

    /// The line saying TIME is `behind` the time the clock gives, once
    /// per step of a second or more (not while the lead wears off).
    fn behind_line(&mut self, behind: u64) -> Option<Line> {
        let said = self
            .logged_behind
            .is_some_and(|logged| behind < logged.saturating_add(STEP_BACK_TOLERANCE_MS));
        self.logged_behind = Some(behind);
        if said {
            return None;
        }
        Some(Line::Warn(format!(
            "the engine's clock (TIME) is {:.1}s behind the time it gave before (its newest \
             entry id, or an earlier reading): stepped back (or a step ahead put right)? \
             Grants are judged by a clock that runs at half speed until it meets TIME; make \
             the engine's host slew its clock (chrony, ntpd), not step it",
            behind as f64 / 1000.0
        )))
    }

    fn note_floor(&mut self, id_ms: u64, boot: u64, wall: u64) -> Option<Line> {
        let reading = self.reading.map(|r| forward(r, boot));
        if id_ms <= self.estimate(boot, wall) {
            // Moves nothing.
            return None;
        }
        let reference = reading.map_or(wall, |reading| reading.max(wall));
        if id_ms > reference.saturating_add(MOST_AHEAD_ID_MS) {
            if self.last_ahead.replace(id_ms) == Some(id_ms) {
                return None;
            }
            self.ids_ahead += 1;
            let due = self
                .ids_ahead_logged
                .is_none_or(|at| boot.saturating_sub(at) >= AHEAD_LOG_INTERVAL_MS);
            if !due {
                return None;
            }
            self.ids_ahead_logged = Some(boot);
            return Some(Line::Warn(format!(
                "an entry id of time {id_ms} is {:.1}s ahead of this host's clock and the \
                 engine's: not taken as the engine's time ({} such id(s) so far; a writer \
                 to the engine added it by hand?)",
                (id_ms - reference) as f64 / 1000.0,
                self.ids_ahead
            )));
        }
        let Some(reading) = reading else {
            self.floor = Some((id_ms, boot));
            return None;
        };
        // Ahead of TIME: a lead, which wears off like any other.
        let lead = id_ms - reading;
        self.lead = Some((lead, boot));
        if lead > STEP_BACK_TOLERANCE_MS {
            return self.behind_line(lead);
        }
        None
    }

    fn skew(&self, wall: u64, boot: u64) -> Option<i64> {
        self.reading?;
        let engine = self.estimate(boot, wall) as i128;
        Some((engine - wall as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }

    fn skew_line(&mut self, wall: u64, boot: u64) -> Option<Line> {
        let skew = self.skew(wall, boot)?;
        let notable = skew.abs() >= NOTABLE_SKEW_MS;
        let changed = match self.logged_skew {
            None => notable,
            Some(logged) => (skew - logged).abs() >= NOTABLE_SKEW_MS,
        };
        if !changed {
            return None;
        }
        self.logged_skew = Some(skew);
        Some(Line::Warn(if notable {
            format!(
                "this host's clock is {:.1}s {} the engine's; grants are timed by the \
                 engine's clock (check NTP on both)",
                skew.unsigned_abs() as f64 / 1000.0,
                if skew > 0 { "behind" } else { "ahead of" }
            )
        } else {
            "this host's clock agrees with the engine's again".to_owned()
        }))
    }
}

/// Reads TIME's reply: seconds and microseconds, as two numbers in text.
pub fn parse_time(reply: &Value) -> Result<u64, BadReply> {
    let bad = || BadReply("TIME did not answer [seconds, microseconds]".into());
    let Value::Array(parts) = reply else {
        return Err(bad());
    };
    let [secs, micros] = parts.as_slice() else {
        return Err(bad());
    };
    let number = |value: &Value| {
        octets(value)
            .and_then(|o| std::str::from_utf8(o).ok())
            .filter(|t| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
    };
    match (number(secs), number(micros)) {
        (Some(secs), Some(micros)) if micros < 1_000_000 => secs
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(micros / 1000))
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// Milliseconds on CLOCK_BOOTTIME.
pub fn boot_ms() -> u64 {
    crate::gate::clock::boottime_ns() / 1_000_000
}

/// Milliseconds since the Unix epoch on this host's wall clock.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENGINE: u64 = 1_764_546_300_000;
    const HOUR: u64 = 3_600_000;

    /// A sample answered `engine_ms` after a round trip from `sent` to
    /// `received` on the boot clock.
    fn sample(engine_ms: u64, sent: u64, received: u64) -> Sample {
        Sample {
            engine_ms,
            sent_boot_ms: sent,
            received_boot_ms: received,
        }
    }

    /// Reads the engine's time as `engine_ms` at boot time `boot`, with
    /// no round trip.
    fn read(state: &mut ClockState, engine_ms: u64, boot: u64) -> Option<Line> {
        state.record(sample(engine_ms, boot, boot), boot)
    }

    #[test]
    fn the_engines_time_is_carried_forward_on_the_boot_clock_not_the_wall_clock() {
        let mut state = ClockState::default();
        // Without a reading: this host's wall clock.
        assert_eq!(state.now_ms(5_000, 42), 42);
        // Read with a 10 ms round trip, at boot time 5 s.
        state.record(sample(ENGINE, 4_990, 5_000), 5_000);
        assert_eq!(state.now_ms(5_000, 0), ENGINE + 5);
        // 60 s later on the boot clock, whatever the wall clock says (it
        // was stepped an hour back).
        assert_eq!(state.now_ms(65_000, ENGINE - HOUR), ENGINE + 60_005);
        // A sample taken a while before it is recorded is carried to then.
        let mut state = ClockState::default();
        state.record(sample(ENGINE, 1_000, 1_000), 1_300);
        assert_eq!(state.now_ms(1_300, 0), ENGINE + 300);
    }

    #[test]
    fn without_the_engines_time_entry_ids_are_a_floor_under_the_wall_clock() {
        let mut state = ClockState::default();
        let behind = ENGINE - 5_000;
        assert_eq!(state.note_floor(ENGINE, 1_000, behind), None);
        assert_eq!(state.now_ms(1_000, behind), ENGINE);
        assert_eq!(state.now_ms(3_000, behind), ENGINE + 2_000);
        // An older id lowers nothing; a wall clock ahead of the floor wins.
        state.note_floor(ENGINE - 10, 3_000, behind);
        assert_eq!(state.now_ms(3_000, behind), ENGINE + 2_000);
        assert_eq!(state.now_ms(3_000, ENGINE + 9_000), ENGINE + 9_000);
        // A reading of the engine's time takes over from the floor.
        read(&mut state, ENGINE + 2_500, 3_000);
        assert_eq!(state.now_ms(3_000, ENGINE + 9_000), ENGINE + 2_500);
    }

    #[test]
    fn a_time_reading_stepped_back_never_takes_the_clock_back_it_runs_slow() {
        // Attack review finding 4: the engine's clock stepped back an
        // hour made every entry and key of the last hour fresh again.
        let mut state = ClockState::default();
        read(&mut state, ENGINE, 1_000);
        assert_eq!(state.now_ms(61_000, ENGINE + 60_000), ENGINE + 60_000);
        let line = read(&mut state, ENGINE + 60_000 - HOUR, 61_000).unwrap();
        assert!(matches!(line, Line::Warn(_)), "{line:?}");
        assert!(line.text().contains("3600.0s behind"), "{line:?}");
        assert!(line.text().contains("slew"), "{line:?}");
        assert_eq!(state.now_ms(61_000, 0), ENGINE + 60_000);
        // Half speed from there, never back.
        assert_eq!(state.now_ms(121_000, 0), ENGINE + 90_000);
        // Read again a minute later, still behind (less so): not said
        // again, and the time given goes on where it was.
        assert_eq!(read(&mut state, ENGINE + 120_000 - HOUR, 121_000), None);
        assert_eq!(state.now_ms(121_000, 0), ENGINE + 90_000);
        // The engine's clock put right: taken, and said.
        let line = read(&mut state, ENGINE + 180_000, 181_000).unwrap();
        assert!(line.text().contains("agrees again"), "{line:?}");
        assert_eq!(state.now_ms(181_000, 0), ENGINE + 180_000);
        // A reading a little behind corrects the boot clock's drift; what
        // is given out runs slow until it has caught up.
        assert_eq!(state.now_ms(241_000, 0), ENGINE + 240_000);
        assert_eq!(read(&mut state, ENGINE + 239_500, 241_000), None);
        assert_eq!(state.now_ms(241_000, 0), ENGINE + 240_000);
        assert_eq!(state.now_ms(241_400, 0), ENGINE + 240_200);
        assert_eq!(state.now_ms(242_000, 0), ENGINE + 240_500);
        assert_eq!(state.now_ms(243_000, 0), ENGINE + 241_500);
        // The skew shown is against the time grants are judged by.
        assert_eq!(state.skew(ENGINE + 241_500, 243_000), Some(0));
    }

    #[test]
    fn a_step_ahead_put_right_wears_off_at_half_speed_never_going_back() {
        // Attack review bus2, F5: the engine's clock an hour ahead for a
        // while, then put right, left every edge an hour ahead until it
        // restarted: grants of POP3 hosts that did not see the step were
        // over on arrival.
        let mut state = ClockState::default();
        read(&mut state, ENGINE + HOUR, 0);
        assert!(read(&mut state, ENGINE + 60_000, 60_000).is_some());
        let mut last = state.now_ms(60_000, 0);
        assert_eq!(last, ENGINE + HOUR + 60_000);
        // TIME read each minute, right from now on; the time given every
        // second: never back, never faster than the boot clock, at least
        // half as fast.
        for boot in (61_000..=60_000 + 3 * HOUR).step_by(1_000) {
            if boot % 60_000 == 0 {
                read(&mut state, ENGINE + boot, boot);
            }
            let now = state.now_ms(boot, 0);
            assert!(
                (500..=1_000).contains(&(now - last)),
                "{boot}: {last} {now}"
            );
            last = now;
            // Two hours on, TIME again.
            if boot >= 60_000 + 2 * HOUR {
                assert_eq!(now, ENGINE + boot);
            }
        }
    }

    #[test]
    fn entry_ids_a_little_ahead_do_not_ratchet_the_clock() {
        // Attack review bus2, F2: ids up to 10 s ahead became the reading
        // at the next TIME refresh, and the next 10 s counted from there:
        // +10 s a minute, without bound, never back.
        let mut state = ClockState::default();
        read(&mut state, ENGINE, 0);
        let mut most = 0;
        for boot in (1_000..=3_600_000).step_by(1_000) {
            if boot % 60_000 == 0 {
                read(&mut state, ENGINE + boot, boot);
            }
            let ahead = state.now_ms(boot, ENGINE + boot) + MOST_AHEAD_ID_MS;
            state.note_floor(ahead, boot, ENGINE + boot);
            let lead = state.now_ms(boot, ENGINE + boot) - (ENGINE + boot);
            most = most.max(lead);
        }
        assert_eq!(most, MOST_AHEAD_ID_MS, "never more than the bound ahead");
        assert!(state.ids_ahead > 3_000, "the rest were too far ahead");
        // The writer stops: the lead wears off.
        let boot = 3_600_000 + 2 * MOST_AHEAD_ID_MS;
        assert_eq!(state.now_ms(boot, 0), ENGINE + boot);
    }

    #[test]
    fn time_behind_the_newest_entry_id_is_said_and_the_id_wins() {
        // The agent starts after the engine's clock went back an hour:
        // its first reading holds nothing to compare with, the stream's
        // newest id (not ahead of this host's clock) does.
        let mut state = ClockState::default();
        assert_eq!(read(&mut state, ENGINE - HOUR, 0), None);
        let line = state.note_floor(ENGINE, 0, ENGINE).unwrap();
        assert!(line.text().contains("3600.0s behind"), "{line:?}");
        assert_eq!(state.now_ms(0, 0), ENGINE);
        assert_eq!(state.now_ms(10_000, 0), ENGINE + 5_000);
        // The engine keeps later ids at its newest millisecond: the same
        // id again, seconds later, says nothing new.
        assert_eq!(state.note_floor(ENGINE, 5_000, ENGINE + 5_000), None);
        // The next reading, still behind, is not said again, and takes
        // nothing back.
        assert_eq!(read(&mut state, ENGINE + 60_000 - HOUR, 60_000), None);
        assert_eq!(state.now_ms(60_000, 0), ENGINE + 30_000);
    }

    #[test]
    fn an_entry_id_far_ahead_is_not_taken_as_the_engines_time() {
        // Attack review finding 7: an entry XADDed with the id
        // <now + 1 year>-0 made every grant look over.
        let year = 365 * 24 * HOUR;
        // Without TIME: ahead of this host's wall clock.
        let mut state = ClockState::default();
        let line = state.note_floor(ENGINE + year, 0, ENGINE).unwrap();
        assert!(line.text().contains("ahead"), "{line:?}");
        assert!(line.text().contains("1 such id"), "{line:?}");
        assert_eq!(state.now_ms(0, ENGINE), ENGINE);
        // Counted once each, logged at most once a minute.
        assert_eq!(state.note_floor(ENGINE + year, 1_000, ENGINE), None);
        assert_eq!(state.ids_ahead, 1, "the same id again");
        assert_eq!(state.note_floor(ENGINE + year + 1, 1_000, ENGINE), None);
        assert_eq!(state.ids_ahead, 2);
        let line = state.note_floor(ENGINE + year + 2, 61_000, ENGINE).unwrap();
        assert!(line.text().contains("3 such id"), "{line:?}");
        // Within the bound: taken.
        state.note_floor(ENGINE + MOST_AHEAD_ID_MS, 61_000, ENGINE);
        assert_eq!(state.now_ms(61_000, ENGINE), ENGINE + MOST_AHEAD_ID_MS);

        // With TIME: ahead of the engine's time too (here this host's
        // clock is an hour behind: ids are checked against the later).
        let mut state = ClockState::default();
        read(&mut state, ENGINE, 0);
        assert!(state.note_floor(ENGINE + year, 0, ENGINE - HOUR).is_some());
        assert_eq!(state.now_ms(0, ENGINE - HOUR), ENGINE);
        assert_eq!(state.note_floor(ENGINE + 500, 0, ENGINE - HOUR), None);
        assert_eq!(state.now_ms(0, ENGINE - HOUR), ENGINE + 500);
        assert_eq!(state.ids_ahead, 1);
    }

    #[test]
    fn the_sample_with_the_shortest_round_trip_is_taken_none_over_the_bound() {
        // Finding 8: a TIME answer that waited behind a blocking read
        // made the reading seconds off.
        let queued = sample(ENGINE + 2_500, 0, 2_500);
        let slow = sample(ENGINE + 30, 0, 60);
        let quick = sample(ENGINE + 4, 0, 8);
        assert_eq!(best_sample(&[queued, slow, quick]), Some(quick));
        assert_eq!(best_sample(&[queued]), None);
        assert_eq!(best_sample(&[]), None);
        let edge = sample(ENGINE, 0, LONGEST_ROUND_TRIP_MS);
        assert_eq!(best_sample(&[edge]), Some(edge));
        assert_eq!(
            best_sample(&[sample(ENGINE, 0, LONGEST_ROUND_TRIP_MS + 1)]),
            None
        );
        // The quick one, taken: half its round trip before it arrived.
        let mut state = ClockState::default();
        state.record(best_sample(&[queued, quick]).unwrap(), 8);
        assert_eq!(state.now_ms(8, 0), ENGINE + 8);
    }

    #[test]
    fn a_notable_skew_is_logged_once_per_change() {
        let mut state = ClockState::default();
        read(&mut state, ENGINE, 0);
        assert_eq!(state.skew_line(ENGINE + 300, 0), None, "within a second");
        let line = state.skew_line(ENGINE - HOUR, 0).unwrap();
        assert!(line.text().contains("3600.0s behind"), "{line:?}");
        assert_eq!(state.skew_line(ENGINE - HOUR - 400, 0), None, "the same");
        let line = state.skew_line(ENGINE + 5_000, 0).unwrap();
        assert!(line.text().contains("5.0s ahead of"), "{line:?}");
        let line = state.skew_line(ENGINE, 0).unwrap();
        assert!(line.text().contains("agrees"), "{line:?}");
        assert_eq!(state.skew(ENGINE - 2_000, 0), Some(2_000));
    }

    #[test]
    fn time_replies_are_read_strictly() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let reply = |a: &str, b: &str| Value::Array(vec![s(a), s(b)]);
        assert_eq!(
            parse_time(&reply("1764546300", "123456")),
            Ok(1_764_546_300_123)
        );
        for bad in [
            reply("-1", "0"),
            reply("1", "1000000"),
            reply("", "0"),
            reply("99999999999999999999", "0"),
            reply("1e9", "0"),
            Value::Array(vec![s("1")]),
            Value::Nil,
            Value::Int(5),
        ] {
            assert!(parse_time(&bad).is_err(), "{bad:?}");
        }
    }
}
