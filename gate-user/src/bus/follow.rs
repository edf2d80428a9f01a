//! The edge's decisions, without I/O (the agent, agent/follower.rs, does
//! the reading and the writing):
//!
//! - whether the grants must first be loaded whole from the keys (no
//!   position yet, or the stream no longer holds what follows it);
//! - how a read is checked for that ([`HeadWatch`]): cheaply, by asking
//!   for one small entry the edge read before (its witness), and by XINFO
//!   STREAM only at each connection and about once a minute, because
//!   XINFO STREAM answers the first and the last entry whole, whatever
//!   their size;
//! - what an entry or a key does to the local map: a grant for what is
//!   left of it (clamped to the window, expiry.rs), a revoke, nothing (it
//!   is over), or a refusal (malformed, absurd);
//! - whether the stream's ids are exhausted;
//! - when the position is written to disk.
//!
//! The rule for a key ([`judge_key`]): a publisher writes its value as
//! the grant's expiry (the engine's time of the login plus the
//! publisher's window) and gives it that window as its time to live in
//! the engine (`PX`). A key grants until the earliest of its value, the
//! engine's own expiry of it (now plus its PTTL) and the edge's window
//! from now. A key without an expiry in the engine (PTTL -1: no publisher
//! writes one, it was written by hand or by someone else), and one whose
//! value or PTTL is more than a century ahead, is refused as malformed.
//! The engine keeps no time of writing an edge could hold a key to (an
//! entry has its id): a key written long ago with a huge time to live
//! grants at each full load no more than the window from then, what a
//! fresh login's key grants, and whoever could write it could write a
//! fresh one as well (README: whoever can write to the engine can open
//! the gate).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use pop3::log_text::LogProse;

use super::{
    event::{Event, Op},
    expiry::lifetime,
    names::Names,
    state::SavedPosition,
    stream::{StreamId, StreamInfo},
};

/// A grant further ahead than this is absurd (no window is longer: the
/// durations an operator can give stop at a century): refused, not
/// clamped.
pub const MOST_AHEAD: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The longest key value an edge reads: an expiry has at most 20 digits.
/// The agent asks for one octet more (GETRANGE 0 64) and refuses what
/// fills it, so a huge value is never read whole.
pub const LONGEST_VALUE: usize = 64;

/// Why the edge loads every grant from the keys before it follows the
/// stream; `None` if it can follow from `position`.
pub fn full_load_reason(
    position: Option<StreamId>,
    info: Option<&StreamInfo>,
) -> Option<&'static str> {
    let Some(position) = position else {
        return Some("no position yet");
    };
    let Some(info) = info else {
        // No stream: nothing was ever published, or the engine lost it
        // (restarted without its data, flushed).
        return (position != StreamId::ZERO).then_some("the stream is gone");
    };
    if info.last_generated < position {
        // The stream was made anew: its ids say nothing of ours.
        return Some("the stream is younger than the position");
    }
    if info.max_deleted.is_some_and(|deleted| deleted > position) {
        // Redis >= 7: an entry after the position was deleted or trimmed,
        // perhaps before it was read (a revoke among them).
        return Some("the stream was trimmed past the position");
    }
    let past = match info.first {
        // The oldest entry left is after the position: what came between
        // may have been trimmed away unread, or the stream was made anew
        // (deleted and added to again while the edge was away) and its
        // first entries only happen to have later ids than ours.
        Some(first) => first > position,
        // Empty, though entries were added after the position.
        None => info.last_generated > position,
    };
    if position != StreamId::ZERO {
        return past.then_some("the stream was trimmed past the position");
    }
    // Nothing read yet: the first entries of a young stream are all there
    // unless the engine says one was taken out (Redis >= 7).
    (past && !info.never_trimmed()).then_some("the stream was trimmed past the position")
}

/// What one entry or key does to the local map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Grant the address for this long from now.
    Grant(IpAddr, Duration),
    /// Take the address's grant away.
    Revoke(IpAddr),
    /// A grant already over: nothing to do.
    Expired,
}

/// What `event`, the entry of id time `entry_ms`, does at `now_ms` (the
/// engine's clock, clock.rs) under the gate's `window`; an error for an
/// absurd expiry.
///
/// The entry's id is the engine's time when it was added: a grant ends
/// no later than a window after it, whatever its `expires` claims. So a
/// publisher whose clock is ahead cannot make an entry replayed later (a
/// restart, a position read back) grant a whole window again (attack
/// review F7).
pub fn judge(
    event: &Event,
    entry_ms: u64,
    now_ms: u64,
    window: Duration,
) -> Result<Verdict, String> {
    match event.op {
        Op::Grant { expires_ms } => {
            let issued_under = entry_ms.saturating_add(window.as_millis() as u64);
            match grant_verdict(event.addr, expires_ms, now_ms, window)? {
                Verdict::Grant(..) => {
                    grant_verdict(event.addr, expires_ms.min(issued_under), now_ms, window)
                }
                verdict => Ok(verdict),
            }
        }
        Op::Revoke => Ok(Verdict::Revoke(event.addr)),
    }
}

fn grant_verdict(
    addr: IpAddr,
    expires_ms: u64,
    now_ms: u64,
    window: Duration,
) -> Result<Verdict, String> {
    let most = now_ms.saturating_add(MOST_AHEAD.as_millis() as u64);
    if expires_ms > most {
        return Err(format!(
            "expiry {expires_ms} is absurd (more than a century ahead)"
        ));
    }
    Ok(match lifetime(expires_ms, now_ms, window) {
        Some(lifetime) => Verdict::Grant(addr, lifetime),
        None => Verdict::Expired,
    })
}

/// What a key read in a full load does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    /// The verdict, and the key's value: the grant's expiry, which the
    /// revoke tombstones judge a key by (bus/tombstones.rs).
    Apply(Verdict, u64),
    /// The key went between SCAN and GET (expired, revoked): nothing.
    Gone,
    /// Malformed: skipped and counted.
    Bad(String),
}

/// Judges the grant key `key`, its value (the first
/// [`LONGEST_VALUE`]` + 1` octets) and its PTTL. The key must name an
/// address as a publisher writes it; the value is the expiry; the engine's
/// own time to live (free of any clock's skew) caps it, so neither can
/// make a grant outlive the other.
pub fn judge_key(
    names: &Names,
    key: &[u8],
    value: &[u8],
    pttl: i64,
    now_ms: u64,
    window: Duration,
) -> KeyVerdict {
    let Some(addr) = names.address_of(key) else {
        return KeyVerdict::Bad("the key names no address".into());
    };
    match pttl {
        -2 => return KeyVerdict::Gone,
        -1 => return KeyVerdict::Bad("the key has no expiry in the engine".into()),
        pttl if pttl < 0 => return KeyVerdict::Bad(format!("PTTL {pttl}")),
        pttl if pttl as u128 > MOST_AHEAD.as_millis() => {
            return KeyVerdict::Bad(format!("PTTL {pttl} is absurd (more than a century ahead)"))
        }
        _ => {}
    }
    if value.len() > LONGEST_VALUE {
        return KeyVerdict::Bad(format!("a value longer than {LONGEST_VALUE} octets"));
    }
    let Some(expires_ms) = std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .filter(|v| *v == "0" || !v.starts_with('0'))
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return KeyVerdict::Bad(format!(
            "value {} is not a time",
            String::from_utf8_lossy(value).escape_debug()
        ));
    };
    let engine_ends = now_ms.saturating_add(pttl as u64);
    match grant_verdict(addr, expires_ms, now_ms, window) {
        Ok(Verdict::Grant(addr, _)) => KeyVerdict::Apply(
            grant_verdict(addr, expires_ms.min(engine_ends), now_ms, window)
                .unwrap_or(Verdict::Expired),
            expires_ms,
        ),
        Ok(verdict) => KeyVerdict::Apply(verdict, expires_ms),
        Err(why) => KeyVerdict::Bad(why),
    }
}

/// How often the position is written while entries flow: losing it
/// costs a restart only the replay of what came since (applying an entry
/// twice changes nothing), and writing it for every entry would cost the
/// flow an fsync each.
pub const POSITION_INTERVAL: Duration = Duration::from_secs(1);

/// When the position goes to disk: at most every [`POSITION_INTERVAL`]
/// while it moves, at once when asked (the stream went quiet, a full
/// load ended, the agent stops).
/// A pending full load going on or off the file is always written at
/// once (the follower asks so).
#[derive(Debug, Default)]
pub struct PositionKeeper {
    written: Option<SavedPosition>,
    at: Option<Instant>,
}

impl PositionKeeper {
    /// True if `position` should be written now.
    pub fn due(&self, position: Option<SavedPosition>, now: Instant, at_once: bool) -> bool {
        if position.is_none() || position == self.written {
            return false;
        }
        at_once
            || self
                .at
                .is_none_or(|at| now.duration_since(at) >= POSITION_INTERVAL)
    }

    /// `position` was written at `now`.
    pub fn wrote(&mut self, position: SavedPosition, now: Instant) {
        self.written = Some(position);
        self.at = Some(now);
    }

    /// Writing failed at `now`: tried again when due after it.
    pub fn failed(&mut self, now: Instant) {
        self.at = Some(now);
    }

    /// How long the next blocking read may wait, at most `longest`: while
    /// `position` is not on disk, only until it is due, so that it is
    /// written within [`POSITION_INTERVAL`] even when the stream goes
    /// quiet.
    pub fn block(
        &self,
        position: Option<SavedPosition>,
        now: Instant,
        longest: Duration,
    ) -> Duration {
        if position.is_none() || position == self.written {
            return longest;
        }
        let since = self
            .at
            .map_or(POSITION_INTERVAL, |at| now.duration_since(at));
        POSITION_INTERVAL
            .saturating_sub(since)
            .clamp(Duration::from_millis(1), longest)
    }
}

/// How often XINFO STREAM is asked while the edge follows (besides at
/// each connection and before each full load): for what the witness
/// cannot tell (a stream deleted and made anew with ids below the
/// position, an entry deleted by XDEL after the position: Redis >= 7's
/// max-deleted-entry-id).
pub const INFO_EVERY: Duration = Duration::from_secs(60);

/// The largest entry (its field names and values, in octets) the edge
/// takes as its witness; a publisher's entry has under 400. Asking for a
/// witness never reads more than this (the engine never changes an
/// entry).
pub const LONGEST_WITNESS: usize = 4096;

/// How a read is checked for entries trimmed unread: what
/// [`HeadWatch::check`] says to do after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadCheck {
    /// Nothing (no witness, no entry read, XINFO not due).
    Nothing,
    /// `XRANGE <events> <id> <id>`: the witness is still there, so the
    /// stream lost nothing after it, which is at or before the position
    /// the read started from (MAXLEN and MINID trim from the oldest
    /// entry on); gone, the grants are loaded from the keys.
    Witness(StreamId),
    /// XINFO STREAM, judged by [`full_load_reason`] as of the position
    /// the read started from.
    Info,
}

/// What the edge knows to check its reads with.
///
/// A trim of entries the edge had not read yet (a revoke among them)
/// takes away every entry before them too, the one at the position
/// included. So after each read it is enough to see that an entry at or
/// before the position the read started from is still there: the
/// witness, the newest small entry the edge read (small, so that the
/// check never reads much: the entry at the position may be huge). That
/// the read itself showed nothing lost says nothing: XREAD answers the
/// entries after an id whether or not that id is still there.
///
/// Without a witness (none read since the start or the last full load,
/// whose position is the stream's last id, which may have no entry; or
/// only huge entries), a read that gave entries is checked with XINFO
/// STREAM; one that gave none waits for the next XINFO (nothing past the
/// position was there to lose, unless the stream was cut by hand or made
/// anew below the position, which the minutely XINFO finds). An engine
/// that refuses XRANGE (an ACL from before it was needed) is checked with
/// XINFO after every read, and asked again after [`INFO_EVERY`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadWatch {
    witness: Option<StreamId>,
    info_at: Option<Instant>,
    refused_at: Option<Instant>,
}

impl HeadWatch {
    /// What to check after a read at `now` (`read_any`: it gave entries).
    /// Call it before the read's entries are taken in ([`Self::read`]):
    /// the witness must be at or before where the read started.
    pub fn check(&self, now: Instant, read_any: bool) -> HeadCheck {
        let due = |at: Option<Instant>| at.is_none_or(|at| now.duration_since(at) >= INFO_EVERY);
        let refused = !due(self.refused_at);
        if due(self.info_at) || refused {
            return HeadCheck::Info;
        }
        match self.witness {
            Some(witness) => HeadCheck::Witness(witness),
            None if read_any => HeadCheck::Info,
            None => HeadCheck::Nothing,
        }
    }

    /// The entry `id`, of `size` octets (`None`: unknown, its fields
    /// could not be read), was read: the position moved to it.
    pub fn read(&mut self, id: StreamId, size: Option<usize>) {
        if size.is_some_and(|size| size <= LONGEST_WITNESS) && self.witness < Some(id) {
            self.witness = Some(id);
        }
    }

    /// What to check at a connection, when the position is known and no
    /// full load is pending: the witness while XINFO STREAM is not due
    /// (read within [`INFO_EVERY`], XRANGE not refused), else XINFO. So a
    /// reconnect after a read that timed out does not read a huge first
    /// or last entry again (attack review bus2 F3).
    pub fn at_connect(&self, now: Instant) -> HeadCheck {
        match self.check(now, true) {
            HeadCheck::Witness(witness) => HeadCheck::Witness(witness),
            _ => HeadCheck::Info,
        }
    }

    /// XINFO STREAM was read at `now`.
    pub fn info_read(&mut self, now: Instant) {
        self.info_at = Some(now);
    }

    /// The engine refused XRANGE at `now`.
    pub fn refused(&mut self, now: Instant) {
        self.refused_at = Some(now);
    }

    /// The engine answered XRANGE.
    pub fn accepted(&mut self) {
        self.refused_at = None;
    }

    /// A full load ended: the position is the stream's last id then,
    /// which the edge did not read (it may have no entry).
    pub fn loaded(&mut self) {
        self.witness = None;
    }
}

/// True if the stream can take no more entries: its last id, as XINFO
/// STREAM said (`last_generated`) or as the edge read it (`position`), is
/// the last possible one. Every XADD then fails, so no grant or revoke
/// reaches the edges until an operator deletes the stream.
pub fn ids_exhausted(position: Option<StreamId>, last_generated: Option<StreamId>) -> bool {
    position == Some(StreamId::MAX) || last_generated == Some(StreamId::MAX)
}

/// How long a read of one entry after a read that timed out may take
/// beyond its block, and XINFO STREAM after one that timed out: on a
/// connection of its own (bus/link.rs [`connection_apart`]), so that a
/// slow link still brings a huge entry (100 MB at 100 Mbit/s: 8 s),
/// which the response timeout never lets arrive; bounded, so that one
/// that does not even then costs a minute a try, not the edge for good
/// (attack review bus2 F3).
///
/// [`connection_apart`]: super::link::Link::connection_apart
pub const SLOW_READ: Duration = Duration::from_secs(60);

/// How many entries one read asks for: `most` while reads succeed; one
/// after a read the engine's answer to did not arrive in time, then twice
/// as many after each read that did, back up to `most`.
///
/// Entries of a million fields each (written by whoever may write to the
/// engine; the edge skips them as malformed once it has read them) made a
/// batch's reply too large to arrive and be read within the timeout, so
/// the same read failed for good and the edge never saw another grant
/// (attack review F4). One entry at a time gets past them; the read of
/// one entry after a timeout is [`slow`](Self::slow): it may take
/// [`SLOW_READ`], so that one huge entry gets past a slow link too
/// (attack review bus2 F3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadSize {
    count: usize,
    most: usize,
    slow: bool,
}

impl ReadSize {
    pub fn new(most: usize) -> Self {
        Self {
            count: most.max(1),
            most: most.max(1),
            slow: false,
        }
    }

    /// The COUNT of the next read.
    pub fn count(&self) -> usize {
        self.count
    }

    /// True if the last read was not answered in time: the next, of one
    /// entry, may take [`SLOW_READ`].
    pub fn slow(&self) -> bool {
        self.slow
    }

    /// A read was answered.
    pub fn answered(&mut self) {
        self.count = (self.count * 2).min(self.most);
        self.slow = false;
    }

    /// A read was not answered in time.
    pub fn timed_out(&mut self) {
        self.count = 1;
        self.slow = true;
    }
}

/// What the log and `bus status` say when even a slow read of one entry
/// (after `after`, of the stream `events`) did not arrive within
/// `within`. The engine has no command that answers an entry's id
/// without its fields, so the edge cannot name it: the operator's
/// XRANGE, on a fast link, can.
pub fn stuck_entry_text(events: &str, after: StreamId, within: Duration) -> String {
    format!(
        "the entry after {after} does not arrive within {within:?}: a huge entry? This edge \
         gets no grant or revoke past it until it does; an operator may delete it (its id: \
         XRANGE {events} ({after} + COUNT 1, whose reply starts with it; then XDEL {events} \
         <id>) or trim the stream"
    )
}

/// What the log and `bus status` say when even a slow XINFO STREAM did
/// not arrive within `within`: it answers the stream's first and last
/// entries whole.
pub fn stuck_info_text(events: &str, within: Duration) -> String {
    format!(
        "XINFO STREAM {events} does not arrive within {within:?}: the stream's first or last \
         entry is huge? An operator may delete it (XDEL) or trim the stream"
    )
}

/// Text the engine sent, or a message quoting it (a key name, an error,
/// a reason naming a field's value), made fit for a log line: escaped
/// (pop3::log_text's [`LogProse`]: a line end, a control character,
/// other than ASCII or an octet that is not UTF-8 cannot end the line
/// and forge another, attack review) and cut to `most` characters (what
/// the engine sends may be long). The one helper for every such line of
/// the bus.
pub fn shorten(text: &(impl AsRef<[u8]> + ?Sized), most: usize) -> String {
    let text = text.as_ref();
    // Each octet is at least one character escaped: no more is escaped
    // than can be shown.
    let head = &text[..text.len().min(most.saturating_add(1))];
    let escaped = LogProse::of(head).to_string();
    match escaped.char_indices().nth(most) {
        Some((end, _)) => format!("{}... ({} octets)", &escaped[..end], text.len()),
        None => escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::names::DEFAULT_PREFIX;

    const WINDOW: Duration = Duration::from_secs(900);
    const NOW: u64 = 1_764_546_300_000;

    fn id(text: &str) -> StreamId {
        text.parse().unwrap()
    }

    fn info(last: &str, first: Option<&str>) -> StreamInfo {
        StreamInfo {
            last_generated: id(last),
            first: first.map(id),
            length: None,
            entries_added: None,
            max_deleted: None,
        }
    }

    #[test]
    fn a_full_load_comes_first_without_a_position_or_when_it_was_trimmed() {
        let at = Some(id("100-5"));
        // Following is enough: the stream still holds the position (or
        // the entry after it), or nothing came since.
        for fine in [
            info("200-0", Some("100-5")),
            info("200-0", Some("50-0")),
            info("100-5", Some("100-5")),
            info("100-5", None),
        ] {
            assert_eq!(full_load_reason(at, Some(&fine)), None, "{fine:?}");
        }
        assert_eq!(
            full_load_reason(None, Some(&info("5-0", Some("1-0")))),
            Some("no position yet")
        );
        assert_eq!(full_load_reason(None, None), Some("no position yet"));
        // Trimmed past: the oldest entry is after the position, or the
        // stream is empty though entries came after it.
        for trimmed in [
            info("200-0", Some("100-6")),
            info("200-0", Some("150-0")),
            info("100-6", None),
        ] {
            assert_eq!(
                full_load_reason(at, Some(&trimmed)),
                Some("the stream was trimmed past the position"),
                "{trimmed:?}"
            );
        }
        // A stream made anew, or none at all.
        assert_eq!(
            full_load_reason(at, Some(&info("3-0", Some("1-0")))),
            Some("the stream is younger than the position")
        );
        assert_eq!(full_load_reason(at, None), Some("the stream is gone"));
        assert_eq!(full_load_reason(Some(StreamId::ZERO), None), None);
        // Redis 7 says whether an entry was ever taken out: the first
        // entries of a young stream after a position of 0-0 were not.
        let young = StreamInfo {
            length: Some(3),
            entries_added: Some(3),
            ..info("200-0", Some("150-0"))
        };
        assert_eq!(full_load_reason(Some(StreamId::ZERO), Some(&young)), None);
        let trimmed = StreamInfo {
            entries_added: Some(4),
            ..young
        };
        assert!(full_load_reason(Some(StreamId::ZERO), Some(&trimmed)).is_some());
        let emptied = StreamInfo {
            length: Some(0),
            entries_added: Some(3),
            ..info("200-0", None)
        };
        assert!(full_load_reason(at, Some(&emptied)).is_some());
    }

    #[test]
    fn a_stream_made_anew_past_the_position_is_not_ours() {
        // Deleted and recreated while the edge was away: young (nothing
        // ever trimmed), its first id after the position. What was
        // revoked in the old stream's last entries is in neither.
        let at = Some(id("100-5"));
        let anew = StreamInfo {
            length: Some(3),
            entries_added: Some(3),
            max_deleted: Some(StreamId::ZERO),
            ..info("200-0", Some("150-0"))
        };
        assert_eq!(
            full_load_reason(at, Some(&anew)),
            Some("the stream was trimmed past the position")
        );
        assert_eq!(full_load_reason(Some(StreamId::ZERO), Some(&anew)), None);
    }

    #[test]
    fn an_entry_deleted_after_the_position_means_a_full_load() {
        // Redis 7: the position's entry is still there (an XREAD from it
        // answers without complaint), but entries after it were trimmed
        // or deleted, perhaps a revoke the edge never read.
        let at = Some(id("100-5"));
        let deleted = |max: &str| StreamInfo {
            length: Some(10),
            entries_added: Some(12),
            max_deleted: Some(id(max)),
            ..info("200-0", Some("100-5"))
        };
        assert_eq!(
            full_load_reason(at, Some(&deleted("150-0"))),
            Some("the stream was trimmed past the position")
        );
        assert_eq!(
            full_load_reason(at, Some(&deleted("100-6"))),
            Some("the stream was trimmed past the position")
        );
        // What was taken out up to the position was read already.
        assert_eq!(full_load_reason(at, Some(&deleted("100-5"))), None);
        assert_eq!(full_load_reason(at, Some(&deleted("99-0"))), None);
    }

    #[test]
    fn a_position_ahead_of_the_stream_means_a_full_load() {
        // A test entry with a far future id was added and deleted: the
        // stream's last id is now behind the position, and an XREAD from
        // it would wait forever.
        let at = Some(id("99999999999999-0"));
        assert_eq!(
            full_load_reason(at, Some(&info("200-0", Some("1-0")))),
            Some("the stream is younger than the position")
        );
    }

    fn event(op: Op) -> Event {
        Event {
            op,
            addr: "192.0.2.7".parse().unwrap(),
            issued_ms: NOW,
            origin: "pop1".into(),
        }
    }

    #[test]
    fn an_entry_grants_what_is_left_revokes_or_is_over() {
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        let grant = |expires_ms| judge(&event(Op::Grant { expires_ms }), NOW, NOW, WINDOW);
        assert_eq!(
            grant(NOW + 60_000),
            Ok(Verdict::Grant(addr, Duration::from_secs(60)))
        );
        // Skew and long claims: clamped to the window.
        assert_eq!(grant(NOW + 901_000), Ok(Verdict::Grant(addr, WINDOW)));
        assert_eq!(grant(NOW + 86_400_000), Ok(Verdict::Grant(addr, WINDOW)));
        assert_eq!(grant(NOW), Ok(Verdict::Expired));
        assert_eq!(grant(0), Ok(Verdict::Expired));
        for absurd in [u64::MAX, NOW + MOST_AHEAD.as_millis() as u64 + 1] {
            assert!(grant(absurd).unwrap_err().contains("absurd"));
        }
        assert_eq!(
            judge(&event(Op::Revoke), NOW, NOW, WINDOW),
            Ok(Verdict::Revoke(addr))
        );
    }

    #[test]
    fn an_entry_grants_no_longer_than_a_window_after_it_was_added() {
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        // A publisher an hour ahead: its entry claims an hour and a window.
        let ahead = event(Op::Grant {
            expires_ms: NOW + 3_600_000 + 900_000,
        });
        assert_eq!(
            judge(&ahead, NOW, NOW, WINDOW),
            Ok(Verdict::Grant(addr, WINDOW))
        );
        // Replayed ten minutes after it was added: what is left of the
        // window, not the window again.
        assert_eq!(
            judge(&ahead, NOW, NOW + 600_000, WINDOW),
            Ok(Verdict::Grant(addr, Duration::from_secs(300)))
        );
        // Replayed after the window: over.
        assert_eq!(
            judge(&ahead, NOW, NOW + 900_000, WINDOW),
            Ok(Verdict::Expired)
        );
        // An entry whose own expiry is earlier keeps it.
        let short = event(Op::Grant {
            expires_ms: NOW + 60_000,
        });
        assert_eq!(
            judge(&short, NOW, NOW, WINDOW),
            Ok(Verdict::Grant(addr, Duration::from_secs(60)))
        );
    }

    #[test]
    fn a_key_grants_until_the_earlier_of_its_value_and_its_ttl() {
        let names = Names::new(DEFAULT_PREFIX).unwrap();
        let addr: IpAddr = "2001:db8::7".parse().unwrap();
        let key = names.grant(addr);
        let judge = |value: &str, pttl: i64| {
            judge_key(&names, key.as_bytes(), value.as_bytes(), pttl, NOW, WINDOW)
        };
        let expires = (NOW + 300_000).to_string();
        let grant =
            |secs, value| KeyVerdict::Apply(Verdict::Grant(addr, Duration::from_secs(secs)), value);
        assert_eq!(judge(&expires, 300_000), grant(300, NOW + 300_000));
        // The engine's clock says less is left (or the value more): the less.
        assert_eq!(judge(&expires, 100_000), grant(100, NOW + 300_000));
        assert_eq!(
            judge(&(NOW + 3_600_000).to_string(), 3_600_000),
            grant(900, NOW + 3_600_000)
        );
        // Written long ago by a skewed or hostile writer, with a value and
        // a time to live of years: the window from now, no more.
        let years = 10 * 365 * 86_400_000;
        assert_eq!(
            judge(&(NOW + years).to_string(), years as i64),
            grant(900, NOW + years)
        );
        // A huge time to live never takes a grant past its value.
        assert_eq!(judge(&expires, years as i64), grant(300, NOW + 300_000));
        assert_eq!(judge(&expires, -2), KeyVerdict::Gone);
        assert_eq!(
            judge(&NOW.to_string(), 5),
            KeyVerdict::Apply(Verdict::Expired, NOW)
        );
        for (value, pttl, why) in [
            (expires.as_str(), -1, "no expiry"),
            ("abc", 1000, "not a time"),
            ("", 1000, "not a time"),
            ("0300", 1000, "not a time"),
            ("-5", 1000, "not a time"),
            ("18446744073709551615", 1000, "absurd"),
            (&"9".repeat(65), 1000, "longer than 64"),
            (expires.as_str(), i64::MAX, "absurd"),
            (
                expires.as_str(),
                MOST_AHEAD.as_millis() as i64 + 1,
                "absurd",
            ),
        ] {
            match judge(value, pttl) {
                KeyVerdict::Bad(reason) => assert!(reason.contains(why), "{value}: {reason}"),
                other => panic!("{value} {pttl}: {other:?}"),
            }
        }
        for bad_key in [
            "smtp-gate:grant:300.1.1.1",
            "smtp-gate:grant:::ffff:1.2.3.4",
            "smtp-gate:events",
        ] {
            assert!(matches!(
                judge_key(
                    &names,
                    bad_key.as_bytes(),
                    expires.as_bytes(),
                    1000,
                    NOW,
                    WINDOW
                ),
                KeyVerdict::Bad(_)
            ));
        }
    }

    #[test]
    fn the_position_is_written_at_most_every_interval_unless_asked() {
        let at = |text| SavedPosition::at(id(text));
        let mut keeper = PositionKeeper::default();
        let start = Instant::now();
        assert!(!keeper.due(None, start, true), "nothing to write");
        assert!(keeper.due(Some(at("1-0")), start, false), "the first one");
        keeper.wrote(at("1-0"), start);
        assert!(!keeper.due(Some(at("1-0")), start, true), "unchanged");
        let soon = start + Duration::from_millis(200);
        assert!(!keeper.due(Some(at("2-0")), soon, false));
        assert!(keeper.due(Some(at("2-0")), soon, true));
        assert!(keeper.due(Some(at("2-0")), start + POSITION_INTERVAL, false));
        // A read waits no longer than until the position is due.
        let long = Duration::from_secs(5);
        assert_eq!(keeper.block(Some(at("1-0")), soon, long), long, "on disk");
        assert_eq!(
            keeper.block(Some(at("2-0")), soon, long),
            POSITION_INTERVAL - Duration::from_millis(200)
        );
        let late = start + Duration::from_secs(3);
        assert_eq!(
            keeper.block(Some(at("2-0")), late, long),
            Duration::from_millis(1)
        );
        assert_eq!(
            PositionKeeper::default().block(Some(at("2-0")), late, long),
            Duration::from_millis(1)
        );
        // A write that failed is tried again an interval later, not at
        // once (a full disk must not make the reads spin).
        keeper.failed(late);
        assert_eq!(keeper.block(Some(at("2-0")), late, long), POSITION_INTERVAL);
        assert!(!keeper.due(Some(at("2-0")), late, false));
        // A pending full load going on the file, or off it, is a change.
        keeper.wrote(at("2-0"), late);
        let pending = SavedPosition {
            load_pending: true,
            ..at("2-0")
        };
        assert!(keeper.due(Some(pending), late, true));
        keeper.wrote(pending, late);
        assert!(!keeper.due(Some(pending), late, true));
        assert!(keeper.due(Some(at("2-0")), late, true));
        // So are other grant maps named beside it.
        keeper.wrote(at("2-0"), late);
        let fed = SavedPosition {
            fed: crate::bus::map_identity::MapIdentity::on_this_boot(Some([7, 8])),
            ..at("2-0")
        };
        assert!(fed.fed.is_some());
        assert!(keeper.due(Some(fed), late, true));
    }

    #[test]
    fn a_read_is_checked_by_a_small_witness_and_by_xinfo_about_once_a_minute() {
        let start = Instant::now();
        let mut watch = HeadWatch::default();
        // Before any XINFO (a connection asks it first): XINFO.
        assert_eq!(watch.check(start, false), HeadCheck::Info);
        watch.info_read(start);
        let soon = start + Duration::from_secs(1);
        // No witness yet (a position of 0-0, or from a full load, whose
        // last id may have no entry): a read that gave entries asks
        // XINFO, one that gave none waits for the minutely one.
        assert_eq!(watch.check(soon, true), HeadCheck::Info);
        assert_eq!(watch.check(soon, false), HeadCheck::Nothing);
        // A huge entry, or one whose fields were unreadable, is no
        // witness; a small one is, the newest one read.
        watch.read(id("5-0"), Some(LONGEST_WITNESS + 1));
        watch.read(id("5-1"), None);
        assert_eq!(watch.check(soon, true), HeadCheck::Info);
        watch.read(id("6-0"), Some(180));
        watch.read(id("7-0"), Some(LONGEST_WITNESS));
        watch.read(id("8-0"), Some(10 * 1024 * 1024));
        for read_any in [true, false] {
            assert_eq!(watch.check(soon, read_any), HeadCheck::Witness(id("7-0")));
        }
        watch.read(id("6-5"), Some(10));
        assert_eq!(watch.check(soon, true), HeadCheck::Witness(id("7-0")));
        // About once a minute, XINFO in its place.
        let minute = start + INFO_EVERY;
        assert_eq!(watch.check(minute, false), HeadCheck::Info);
        watch.info_read(minute);
        assert_eq!(
            watch.check(minute + Duration::from_secs(5), false),
            HeadCheck::Witness(id("7-0"))
        );
        // An engine that refuses XRANGE: XINFO after every read for a
        // minute, then XRANGE is tried again.
        let refused = minute + Duration::from_secs(10);
        watch.refused(refused);
        assert_eq!(watch.check(refused, false), HeadCheck::Info);
        watch.info_read(refused);
        assert_eq!(
            watch.check(refused + Duration::from_secs(30), false),
            HeadCheck::Info
        );
        let later = refused + INFO_EVERY;
        watch.info_read(later);
        assert_eq!(watch.check(later, true), HeadCheck::Witness(id("7-0")));
        watch.refused(later);
        watch.accepted();
        assert_eq!(watch.check(later, true), HeadCheck::Witness(id("7-0")));
        // A full load: the position is a last id the edge did not read.
        watch.loaded();
        assert_eq!(watch.check(later, true), HeadCheck::Info);
        assert_eq!(watch.check(later, false), HeadCheck::Nothing);
    }

    #[test]
    fn a_connection_checks_the_witness_while_xinfo_is_not_due() {
        // A reconnect after a read timed out on a huge entry: XINFO would
        // read it again if it is the stream's first or last (bus2 F3).
        let start = Instant::now();
        let mut watch = HeadWatch::default();
        assert_eq!(watch.at_connect(start), HeadCheck::Info, "never asked");
        watch.info_read(start);
        assert_eq!(watch.at_connect(start), HeadCheck::Info, "no witness");
        watch.read(id("7-0"), Some(180));
        let soon = start + Duration::from_secs(10);
        assert_eq!(watch.at_connect(soon), HeadCheck::Witness(id("7-0")));
        assert_eq!(watch.at_connect(start + INFO_EVERY), HeadCheck::Info);
        watch.refused(soon);
        assert_eq!(watch.at_connect(soon), HeadCheck::Info, "XRANGE refused");
        watch.accepted();
        watch.loaded();
        assert_eq!(watch.at_connect(soon), HeadCheck::Info, "after a load");
    }

    #[test]
    fn a_stuck_entry_is_said_plainly() {
        let text = stuck_entry_text("smtp-gate:events", id("100-5"), SLOW_READ);
        for said in [
            "after 100-5 does not arrive within 60s",
            "XRANGE smtp-gate:events (100-5 + COUNT 1",
            "XDEL smtp-gate:events <id>",
            "trim",
        ] {
            assert!(text.contains(said), "{said}: {text}");
        }
        let text = stuck_info_text("smtp-gate:events", SLOW_READ);
        assert!(text.contains("XINFO STREAM smtp-gate:events does not arrive within 60s"));
    }

    #[test]
    fn the_last_possible_id_exhausts_the_stream() {
        let some = Some(id("1764546300000-0"));
        assert!(!ids_exhausted(some, some));
        assert!(!ids_exhausted(None, None));
        assert!(ids_exhausted(Some(StreamId::MAX), some));
        assert!(ids_exhausted(some, Some(StreamId::MAX)));
        assert!(ids_exhausted(None, Some(StreamId::MAX)));
        assert_eq!(
            StreamId::MAX,
            id("18446744073709551615-18446744073709551615")
        );
    }

    #[test]
    fn reads_shrink_to_one_entry_after_a_timeout_and_grow_back() {
        let mut size = ReadSize::new(1000);
        assert_eq!((size.count(), size.slow()), (1000, false));
        size.answered();
        assert_eq!((size.count(), size.slow()), (1000, false));
        // After a timeout, one entry, which may take SLOW_READ; again
        // while that times out too.
        size.timed_out();
        assert_eq!((size.count(), size.slow()), (1, true));
        size.timed_out();
        assert_eq!((size.count(), size.slow()), (1, true));
        let grown: Vec<(usize, bool)> = (0..11)
            .map(|_| {
                size.answered();
                (size.count(), size.slow())
            })
            .collect();
        let counts = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000];
        assert_eq!(grown, counts.map(|count| (count, false)));
        assert_eq!(ReadSize::new(0).count(), 1);
    }

    #[test]
    fn long_text_is_shortened_for_the_log() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("a b c", 5), "a b c");
        assert_eq!(shorten(&"x".repeat(100_000), 5), "xxxxx... (100000 octets)");
        assert_eq!(shorten("äöüäöü", 2), "\\u... (12 octets)");
        assert_eq!(
            shorten("äöüäöü", 20),
            "\\u{00e4}\\u{00f6}\\u{0... (12 octets)"
        );
    }

    /// What the engine sends cannot end a log line and forge another: a
    /// key name, a field's value, an error text (attack review).
    #[test]
    fn engine_text_is_escaped_for_the_log() {
        assert_eq!(
            shorten(b"smtp-gate:grant:x\nbus agent: following again", 100),
            "smtp-gate:grant:x\\nbus agent: following again"
        );
        assert_eq!(
            shorten(b"k\r\x1b[1A\xff\xfe\0", 100),
            "k\\r\\x1b[1A\\xff\\xfe\\x00"
        );
        assert_eq!(shorten("a\u{2028}b", 100), "a\\u{2028}b");
        let all: Vec<u8> = (0..=255).cycle().take(100_000).collect();
        let line = shorten(&all, 300);
        assert!(
            line.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
            "{line}"
        );
        assert!(line.len() < 330, "{line}");
    }
}
