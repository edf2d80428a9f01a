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
//! An engine that refuses `TIME` (an ACL without `+time`) leaves this
//! host's wall clock, with one floor: entry ids are the engine's time of
//! each XADD, so the engine's clock is at least the newest id seen
//! ([`EngineClock::note_entry_time`]). That floor keeps an edge whose
//! clock is behind from taking old grants for fresh ones.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::Value;

use super::stream::{octets, BadReply};

/// How often a connected link reads the engine's time again.
pub const REFRESH: Duration = Duration::from_secs(60);

/// A skew this large between this host and the engine is logged: the
/// design tolerates a second.
pub const NOTABLE_SKEW_MS: i64 = 1000;

/// The engine's time as last read, carried forward on CLOCK_BOOTTIME.
#[derive(Debug, Default)]
pub struct EngineClock {
    state: Mutex<ClockState>,
}

#[derive(Clone, Copy, Debug, Default)]
struct ClockState {
    /// The engine's time (ms) and this host's boot clock (ms) when it was
    /// read.
    reading: Option<(u64, u64)>,
    /// The newest entry id's time seen, and the boot clock then.
    floor: Option<(u64, u64)>,
    /// The skew last logged (engine minus this host, ms).
    logged_skew: Option<i64>,
}

impl EngineClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// The engine's time now, in milliseconds since the Unix epoch, as
    /// well as this host can tell.
    pub fn now_ms(&self) -> u64 {
        self.state().now_ms(boot_ms(), wall_ms())
    }

    /// The engine said its time is `engine_ms` (read between `sent_boot_ms`
    /// and now on the boot clock). Returns the line to log if the skew
    /// against this host's wall clock is notable and changed since the
    /// last one.
    pub fn record(&self, engine_ms: u64, sent_boot_ms: u64) -> Option<String> {
        let now_boot = boot_ms();
        let mut state = self.state();
        state.record(engine_ms, sent_boot_ms, now_boot);
        state.skew_line(wall_ms(), now_boot)
    }

    /// An entry id's time: the engine's clock read at least that.
    pub fn note_entry_time(&self, id_ms: u64) {
        self.state().note_floor(id_ms, boot_ms());
    }

    /// Engine minus this host's wall clock, in ms, if the engine's time
    /// was read.
    pub fn skew_ms(&self) -> Option<i64> {
        self.state().skew(wall_ms(), boot_ms())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClockState {
    fn now_ms(&self, boot: u64, wall: u64) -> u64 {
        let forward = |(ms, at): (u64, u64)| ms.saturating_add(boot.saturating_sub(at));
        match self.reading {
            Some(reading) => forward(reading),
            None => self.floor.map_or(wall, |floor| wall.max(forward(floor))),
        }
    }

    fn record(&mut self, engine_ms: u64, sent_boot: u64, now_boot: u64) {
        // The answer was made somewhere between the question and its
        // answer: half the round trip before now.
        let half_trip = now_boot.saturating_sub(sent_boot) / 2;
        self.reading = Some((engine_ms.saturating_add(half_trip), now_boot));
    }

    fn note_floor(&mut self, id_ms: u64, boot: u64) {
        let now = |floor: Option<(u64, u64)>| {
            floor.map(|(ms, at): (u64, u64)| ms.saturating_add(boot.saturating_sub(at)))
        };
        if now(self.floor).is_none_or(|floor_now| id_ms > floor_now) {
            self.floor = Some((id_ms, boot));
        }
    }

    fn skew(&self, wall: u64, boot: u64) -> Option<i64> {
        self.reading?;
        let engine = self.now_ms(boot, wall) as i128;
        Some((engine - wall as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }

    fn skew_line(&mut self, wall: u64, boot: u64) -> Option<String> {
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
        Some(if notable {
            format!(
                "this host's clock is {:.1}s {} the engine's; grants are timed by the \
                 engine's clock (check NTP on both)",
                skew.unsigned_abs() as f64 / 1000.0,
                if skew > 0 { "behind" } else { "ahead of" }
            )
        } else {
            "this host's clock agrees with the engine's again".to_owned()
        })
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

    #[test]
    fn the_engines_time_is_carried_forward_on_the_boot_clock_not_the_wall_clock() {
        let mut state = ClockState::default();
        // Without a reading: this host's wall clock.
        assert_eq!(state.now_ms(5_000, 42), 42);
        // Read with a 10 ms round trip, at boot time 5 s.
        state.record(ENGINE, 4_990, 5_000);
        assert_eq!(state.now_ms(5_000, 0), ENGINE + 5);
        // 60 s later on the boot clock, whatever the wall clock says (it
        // was stepped an hour back).
        assert_eq!(state.now_ms(65_000, ENGINE - 3_600_000), ENGINE + 60_005);
    }

    #[test]
    fn without_the_engines_time_entry_ids_are_a_floor_under_the_wall_clock() {
        let mut state = ClockState::default();
        let behind = ENGINE - 3_600_000;
        state.note_floor(ENGINE, 1_000);
        assert_eq!(state.now_ms(1_000, behind), ENGINE);
        assert_eq!(state.now_ms(3_000, behind), ENGINE + 2_000);
        // An older id lowers nothing; a wall clock ahead of the floor wins.
        state.note_floor(ENGINE - 10, 3_000);
        assert_eq!(state.now_ms(3_000, behind), ENGINE + 2_000);
        assert_eq!(state.now_ms(3_000, ENGINE + 9_000), ENGINE + 9_000);
        // A reading of the engine's time takes over from the floor.
        state.record(ENGINE + 500, 3_000, 3_000);
        assert_eq!(state.now_ms(3_000, ENGINE + 9_000), ENGINE + 500);
    }

    #[test]
    fn a_notable_skew_is_logged_once_per_change() {
        let mut state = ClockState::default();
        state.record(ENGINE, 0, 0);
        assert_eq!(state.skew_line(ENGINE + 300, 0), None, "within a second");
        let line = state.skew_line(ENGINE - 3_600_000, 0).unwrap();
        assert!(line.contains("3600.0s behind"), "{line}");
        assert_eq!(state.skew_line(ENGINE - 3_600_400, 0), None, "the same");
        let line = state.skew_line(ENGINE + 5_000, 0).unwrap();
        assert!(line.contains("5.0s ahead of"), "{line}");
        let line = state.skew_line(ENGINE, 0).unwrap();
        assert!(line.contains("agrees"), "{line}");
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
