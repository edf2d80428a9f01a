//! Revoke tombstones: the edge remembers each revoke it applied (the
//! address and the revoke entry's id, the engine's time of it) for one
//! window, so that the engine going back in time cannot undo it (attack
//! review, finding 3).
//!
//! An engine restarted from an older snapshot (an RDB file, an AOF that
//! was not synced), or a replica promoted before it had the revoke, holds
//! the keys and the stream as they were before the revoke: the grant's
//! key is back, the stream is younger than the edge's position, the edge
//! loads every grant from the keys and granted the revoked address again.
//! With the tombstones, a grant issued at or before a revoke the edge
//! applied is not applied:
//!
//! - an entry's grant, if its id is before the revoke's;
//! - a key's grant, unless its value (the grant's expiry) less the
//!   edge's window is more than [`KEY_MARGIN_MS`] after the revoke. A
//!   key says when its grant ends, not when it was issued: a publisher
//!   sets the expiry a window (its own) after the login, by the engine's
//!   clock (bus/clock.rs), so the expiry less the edge's window is the
//!   login's time at the latest, if the publisher's window is no longer
//!   than the edge's (the assumption below). So a user revoked and logged
//!   in again is granted by a full load too (attack review bus2, F4).
//!   Such a key, and a grant entry after the revoke, end the tombstone.
//!
//! A tombstone is dropped one window (the edge's) after its revoke: a
//! grant issued before it is over by then, if its publisher's window is
//! no longer than the edge's. Its time is the revoke entry's id, but no
//! later than the edge's clock when it applied the revoke: an id far
//! ahead (written by hand, or the last possible id) made a tombstone
//! that never aged and held the address out for good, also after the
//! stream was deleted and after restarts (bus2, F1). The revoke itself is
//! applied whatever its id. Read back from the file, a tombstone more
//! than [`MOST_AHEAD_ID_MS`] ahead of the edge's clock is dropped, and
//! none is kept later than that clock: none outlives a window from then. At most [`MOST_TOMBSTONES`] are kept, the
//! oldest revoke forgotten first. They are kept in a file beside the
//! position (`<bus_position_file>.revokes`), written whole and synced
//! before the position that moved past them, so a restarted agent has
//! them too.
//!
//! What they do not cover: a revoke this edge never applied (the engine
//! lost it before the edge read it), a revoke older than a window (or
//! pushed out by [`MOST_TOMBSTONES`] newer ones), and the full loads of
//! an edge that lost its state directory. Only an engine that does not
//! lose what it acknowledged covers those (README: the engine's
//! durability).

use std::{
    collections::{BTreeSet, HashMap},
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{clock::MOST_AHEAD_ID_MS, follow::Verdict, state::write_whole, stream::StreamId};
use crate::addr::normalize;

/// The most tombstones kept: far more revokes than a site makes in a
/// window (they are made by hand, `smtp-gate revoke`), and a file of at
/// most about half a megabyte.
pub const MOST_TOMBSTONES: usize = 10_000;

/// The longest tombstone file read: [`MOST_TOMBSTONES`] lines of an IPv6
/// address and an id, with room to spare.
const LONGEST_FILE: u64 = MOST_TOMBSTONES as u64 * 128;

/// The tombstone file beside `position_file`.
pub fn file_beside(position_file: &Path) -> PathBuf {
    let mut name = position_file.as_os_str().to_owned();
    name.push(".revokes");
    PathBuf::from(name)
}

/// A key whose expiry less the edge's window is no more than this after
/// a revoke is taken for a login before it: the second of skew the bus
/// tolerates between the publisher's clock and the engine's.
pub const KEY_MARGIN_MS: u64 = 1000;

/// Where a grant was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issued {
    /// The stream entry of this id.
    Entry(StreamId),
    /// A key (a full load), of this value (the grant's expiry).
    Key { expires_ms: u64 },
}

/// The revokes applied in the last window, by address.
#[derive(Debug)]
pub struct Tombstones {
    path: PathBuf,
    by_addr: HashMap<IpAddr, StreamId>,
    /// The same, oldest revoke first.
    by_age: BTreeSet<(StreamId, IpAddr)>,
    /// Changed since the file was written.
    changed: bool,
    /// Read from the file, not yet held to the edge's clock.
    unsettled: bool,
}

impl Tombstones {
    /// None yet, kept in `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            by_addr: HashMap::new(),
            by_age: BTreeSet::new(),
            changed: false,
            unsettled: false,
        }
    }

    /// The tombstones in `path` (none if there is no file). What cannot
    /// be read is said in the second value; the lines that can are kept.
    pub fn load(path: PathBuf) -> (Self, Option<String>) {
        let mut tombstones = Self::new(path);
        let text = match fs::metadata(&tombstones.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (tombstones, None),
            Ok(meta) if meta.len() > LONGEST_FILE => {
                let why = format!(
                    "{} is {} octets, more than {LONGEST_FILE}: not read",
                    tombstones.path.display(),
                    meta.len()
                );
                return (tombstones, Some(why));
            }
            _ => fs::read(&tombstones.path),
        };
        let text = match text {
            Ok(text) => text,
            Err(e) => {
                let why = format!("{}: {e}", tombstones.path.display());
                return (tombstones, Some(why));
            }
        };
        let mut bad = 0;
        for line in text.split(|&b| b == b'\n') {
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            match parse_line(line) {
                Some((addr, id)) => tombstones.insert(addr, id),
                None => bad += 1,
            }
        }
        // As read: nothing to write back.
        tombstones.changed = false;
        tombstones.unsettled = !tombstones.is_empty();
        let why = (bad > 0).then(|| {
            format!(
                "{}: {bad} line(s) are no `ADDRESS ENTRY-ID`: skipped",
                tombstones.path.display()
            )
        });
        (tombstones, why)
    }

    /// Once after [`Self::load`], at the edge's clock `now_ms`: drops the
    /// tombstones more than [`MOST_AHEAD_ID_MS`] ahead of it (said), and
    /// moves the others back to it at the latest.
    pub fn settle(&mut self, now_ms: u64) -> Option<String> {
        if !std::mem::take(&mut self.unsettled) {
            return None;
        }
        let latest = latest_at(now_ms);
        let later: Vec<(StreamId, IpAddr)> = self
            .by_age
            .iter()
            .rev()
            .take_while(|(id, _)| *id > latest)
            .copied()
            .collect();
        let mut dropped = 0;
        for (id, addr) in later {
            self.remove(addr);
            if id.ms > now_ms.saturating_add(MOST_AHEAD_ID_MS) {
                dropped += 1;
            } else {
                self.insert(addr, latest);
            }
        }
        (dropped > 0).then(|| {
            format!(
                "{}: {dropped} tombstone(s) more than {}s ahead of the engine's time dropped \
                 (a revoke entry written with an id far ahead?)",
                self.path.display(),
                MOST_AHEAD_ID_MS / 1000
            )
        })
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// What `verdict`, read from `issued` at `now_ms` (the engine's
    /// clock) under `window`, does once the tombstones are heard: `None`
    /// for a grant issued before a revoke applied in the last window. A
    /// revoke from an entry leaves a tombstone.
    pub fn screen(
        &mut self,
        verdict: Verdict,
        issued: Issued,
        now_ms: u64,
        window: Duration,
    ) -> Option<Verdict> {
        self.forget_older(now_ms, window);
        match (verdict, issued) {
            (Verdict::Revoke(addr), Issued::Entry(id)) => {
                let id = id.min(latest_at(now_ms));
                if !is_over(id, now_ms, window) {
                    self.insert(addr, id);
                }
                Some(verdict)
            }
            (Verdict::Grant(addr, _), issued) => {
                let Some(&revoked) = self.by_addr.get(&normalize(addr)) else {
                    return Some(verdict);
                };
                let after = match issued {
                    Issued::Entry(id) => id > revoked,
                    Issued::Key { expires_ms } => {
                        let issued_by = expires_ms.saturating_sub(millis(window));
                        issued_by > revoked.ms.saturating_add(KEY_MARGIN_MS)
                    }
                };
                if !after {
                    return None;
                }
                self.remove(normalize(addr));
                Some(verdict)
            }
            _ => Some(verdict),
        }
    }

    /// Writes the file if anything changed since it was; synced, so that
    /// it is on disk before the position that moved past the revokes.
    pub fn save(&mut self) -> io::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let mut text = String::from(
            "# smtp-gate agent: revokes applied in the last window (address, revoke entry id)\n",
        );
        for (id, addr) in &self.by_age {
            text.push_str(&format!("{addr} {id}\n"));
        }
        write_whole(&self.path, text.as_bytes(), true)?;
        self.changed = false;
        Ok(())
    }

    /// Where they are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn insert(&mut self, addr: IpAddr, id: StreamId) {
        let addr = normalize(addr);
        if self.by_addr.get(&addr).is_some_and(|&kept| kept >= id) {
            return;
        }
        self.remove(addr);
        self.by_addr.insert(addr, id);
        self.by_age.insert((id, addr));
        while self.by_age.len() > MOST_TOMBSTONES {
            if let Some((_, oldest)) = self.by_age.pop_first() {
                self.by_addr.remove(&oldest);
            }
        }
        self.changed = true;
    }

    fn remove(&mut self, addr: IpAddr) {
        if let Some(id) = self.by_addr.remove(&addr) {
            self.by_age.remove(&(id, addr));
            self.changed = true;
        }
    }

    /// Drops the tombstones a window old: what was issued before them is
    /// over.
    fn forget_older(&mut self, now_ms: u64, window: Duration) {
        while let Some(&(id, addr)) = self.by_age.first() {
            if !is_over(id, now_ms, window) {
                break;
            }
            self.remove(addr);
        }
    }
}

/// True if a window has passed since `id`'s time at `now_ms`.
fn is_over(id: StreamId, now_ms: u64, window: Duration) -> bool {
    id.ms.saturating_add(millis(window)) <= now_ms
}

fn millis(window: Duration) -> u64 {
    window.as_millis().min(u64::MAX as u128) as u64
}

/// The latest a tombstone made at `now_ms` may be: every id of that
/// millisecond.
fn latest_at(now_ms: u64) -> StreamId {
    StreamId {
        ms: now_ms,
        seq: u64::MAX,
    }
}

/// `ADDRESS ENTRY-ID`, as [`Tombstones::save`] writes it.
fn parse_line(line: &[u8]) -> Option<(IpAddr, StreamId)> {
    let text = std::str::from_utf8(line).ok()?;
    let (addr, id) = text.split_once(' ')?;
    let addr: IpAddr = addr.parse().ok()?;
    Some((normalize(addr), StreamId::parse(id.as_bytes())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(900);
    const NOW: u64 = 1_764_546_300_000;

    /// A key of a login a window before the revokes at `NOW`.
    const KEY_BEFORE: Issued = Issued::Key { expires_ms: NOW };

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn addr(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn grant(text: &str) -> Verdict {
        Verdict::Grant(addr(text), Duration::from_secs(60))
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("smtp-gate-tombstones-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_grant_issued_before_a_revoke_is_not_applied_a_later_one_is() {
        // Attack review finding 3: the engine back to before a revoke
        // (an older snapshot, a replica that missed it) granted the
        // address again from its key and its entry.
        let mut tombstones = Tombstones::new(PathBuf::from("/nonexistent"));
        let revoked = Verdict::Revoke(addr("192.0.2.7"));
        let at = id(NOW);
        assert_eq!(
            tombstones.screen(revoked, Issued::Entry(at), NOW, WINDOW),
            Some(revoked)
        );
        assert_eq!(tombstones.len(), 1);
        let screen = |t: &mut Tombstones, verdict, issued| t.screen(verdict, issued, NOW, WINDOW);
        // The grant before it, from its entry or its key: held back.
        let before = StreamId { ms: NOW, seq: 0 };
        assert_eq!(
            screen(
                &mut tombstones,
                grant("192.0.2.7"),
                Issued::Entry(id(NOW - 5_000))
            ),
            None
        );
        assert_eq!(
            screen(&mut tombstones, grant("192.0.2.7"), KEY_BEFORE),
            None
        );
        assert_eq!(
            screen(&mut tombstones, grant("192.0.2.7"), Issued::Entry(before)),
            None
        );
        // Other addresses and what is no grant: as they are.
        assert_eq!(
            screen(&mut tombstones, grant("192.0.2.8"), KEY_BEFORE),
            Some(grant("192.0.2.8"))
        );
        assert_eq!(
            screen(&mut tombstones, Verdict::Expired, KEY_BEFORE),
            Some(Verdict::Expired)
        );
        // A login after the revoke: applied, and the keys are trusted
        // again.
        let after = StreamId { ms: NOW, seq: 1 };
        assert_eq!(
            screen(&mut tombstones, grant("192.0.2.7"), Issued::Entry(after)),
            Some(grant("192.0.2.7"))
        );
        assert!(tombstones.is_empty());
        assert_eq!(
            screen(&mut tombstones, grant("192.0.2.7"), KEY_BEFORE),
            Some(grant("192.0.2.7"))
        );
    }

    #[test]
    fn a_tombstone_lasts_one_window_and_there_are_at_most_so_many() {
        let mut tombstones = Tombstones::new(PathBuf::from("/nonexistent"));
        let window_ms = WINDOW.as_millis() as u64;
        tombstones.screen(
            Verdict::Revoke(addr("192.0.2.7")),
            Issued::Entry(id(NOW)),
            NOW,
            WINDOW,
        );
        let key = |t: &mut Tombstones, now| t.screen(grant("192.0.2.7"), KEY_BEFORE, now, WINDOW);
        assert_eq!(key(&mut tombstones, NOW + window_ms - 1), None);
        assert!(key(&mut tombstones, NOW + window_ms).is_some());
        assert!(tombstones.is_empty());
        // A revoke read a window after it was made leaves none.
        tombstones.screen(
            Verdict::Revoke(addr("192.0.2.7")),
            Issued::Entry(id(NOW)),
            NOW + window_ms,
            WINDOW,
        );
        assert!(tombstones.is_empty());
        // Past the most: the oldest revokes are forgotten.
        for n in 0..MOST_TOMBSTONES as u64 + 5 {
            let addr = IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | n as u128));
            tombstones.screen(
                Verdict::Revoke(addr),
                Issued::Entry(id(NOW + n)),
                NOW,
                WINDOW,
            );
        }
        assert_eq!(tombstones.len(), MOST_TOMBSTONES);
        let first = IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96));
        let last = IpAddr::from(std::net::Ipv6Addr::from(
            0x2001_0db8_u128 << 96 | (MOST_TOMBSTONES as u128 + 4),
        ));
        let keyed = |t: &mut Tombstones, addr| {
            t.screen(Verdict::Grant(addr, WINDOW), KEY_BEFORE, NOW, WINDOW)
        };
        assert!(keyed(&mut tombstones, first).is_some(), "forgotten");
        assert!(keyed(&mut tombstones, last).is_none(), "kept");
    }

    #[test]
    fn a_revoke_id_far_ahead_leaves_a_tombstone_of_the_edges_time_that_ages() {
        // Attack review bus2, F1: a revoke XADDed with an id a year ahead
        // (or the last possible id) made a tombstone that never aged; once
        // the stream was deleted, new ids were back at the present, and
        // every later login of the address was held back, for good.
        let window_ms = WINDOW.as_millis() as u64;
        let year = 365 * 86_400_000;
        for far in [id(NOW + year), StreamId::MAX] {
            let mut tombstones = Tombstones::new(PathBuf::from("/nonexistent"));
            let revoked = Verdict::Revoke(addr("192.0.2.7"));
            assert_eq!(
                tombstones.screen(revoked, Issued::Entry(far), NOW, WINDOW),
                Some(revoked),
                "the revoke itself is applied"
            );
            assert_eq!(tombstones.len(), 1);
            // Logins before it are held back as for any revoke.
            let login =
                |t: &mut Tombstones, issued, now| t.screen(grant("192.0.2.7"), issued, now, WINDOW);
            assert_eq!(login(&mut tombstones, Issued::Entry(id(NOW)), NOW), None);
            // The stream deleted: new ids at the present, after the edge's
            // time of the revoke, end the tombstone.
            assert!(login(&mut tombstones, Issued::Entry(id(NOW + 1)), NOW + 1).is_some());
            assert!(tombstones.is_empty());
            // Or it ages a window after the edge applied it.
            tombstones.screen(revoked, Issued::Entry(far), NOW, WINDOW);
            assert_eq!(
                login(&mut tombstones, KEY_BEFORE, NOW + window_ms - 1),
                None
            );
            assert!(login(&mut tombstones, KEY_BEFORE, NOW + window_ms).is_some());
            assert!(tombstones.is_empty());
        }
    }

    #[test]
    fn tombstones_read_back_far_ahead_are_dropped_none_outlives_a_window() {
        let dir = scratch("ahead");
        let path = file_beside(&dir.join("bus-position"));
        fs::write(
            &path,
            format!(
                "192.0.2.7 18446744073709551615-18446744073709551615\n\
                 192.0.2.8 {}-0\n192.0.2.9 {}-3\n192.0.2.10 {NOW}-0\n",
                NOW + MOST_AHEAD_ID_MS + 1,
                NOW + MOST_AHEAD_ID_MS,
            ),
        )
        .unwrap();
        let (mut read, why) = Tombstones::load(path.clone());
        assert_eq!((read.len(), why), (4, None));
        let why = read.settle(NOW).unwrap();
        assert!(why.contains("2 tombstone(s)"), "{why}");
        assert_eq!(read.len(), 2);
        assert_eq!(read.settle(NOW), None, "once");
        let window_ms = WINDOW.as_millis() as u64;
        let key = |t: &mut Tombstones, text, now| t.screen(grant(text), KEY_BEFORE, now, WINDOW);
        assert_eq!(key(&mut read, "192.0.2.9", NOW + window_ms - 1), None);
        assert!(key(&mut read, "192.0.2.7", NOW).is_some(), "dropped");
        // The one a little ahead is held to the edge's time: a window.
        assert!(key(&mut read, "192.0.2.9", NOW + window_ms).is_some());
        assert!(key(&mut read, "192.0.2.10", NOW + window_ms).is_some());
        assert!(read.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_of_a_login_after_the_revoke_is_applied_and_ends_the_tombstone() {
        // Attack review bus2, F4: a user revoked and then logged in again
        // was refused by an edge that took the new login from the keys (a
        // full load), for up to a window.
        let window_ms = WINDOW.as_millis() as u64;
        let mut tombstones = Tombstones::new(PathBuf::from("/nonexistent"));
        let revoked = Verdict::Revoke(addr("192.0.2.7"));
        tombstones.screen(revoked, Issued::Entry(id(NOW)), NOW, WINDOW);
        let key = |t: &mut Tombstones, expires_ms| {
            t.screen(
                grant("192.0.2.7"),
                Issued::Key { expires_ms },
                NOW + 5_000,
                WINDOW,
            )
        };
        // Issued at the revoke, or within the margin after it: held back.
        assert_eq!(key(&mut tombstones, NOW + window_ms), None);
        assert_eq!(key(&mut tombstones, NOW + window_ms + KEY_MARGIN_MS), None);
        assert_eq!(tombstones.len(), 1);
        // Issued after it: applied, and the tombstone is over.
        assert_eq!(
            key(&mut tombstones, NOW + window_ms + KEY_MARGIN_MS + 1),
            Some(grant("192.0.2.7"))
        );
        assert!(tombstones.is_empty());
    }

    #[test]
    fn tombstones_are_kept_on_disk_and_read_back() {
        let dir = scratch("disk");
        let path = file_beside(&dir.join("bus-position"));
        assert!(path.ends_with("bus-position.revokes"));
        let (mut tombstones, why) = Tombstones::load(path.clone());
        assert_eq!((tombstones.len(), why), (0, None), "no file yet");
        for (text, ms) in [("192.0.2.7", NOW), ("2001:db8::7", NOW + 1)] {
            tombstones.screen(
                Verdict::Revoke(addr(text)),
                Issued::Entry(id(ms)),
                NOW + 1,
                WINDOW,
            );
        }
        tombstones.save().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("192.0.2.7 1764546300000-0\n2001:db8::7 1764546300001-0\n"),
            "{text}"
        );
        let (mut read, why) = Tombstones::load(path.clone());
        assert_eq!(why, None);
        assert_eq!(read.len(), 2);
        assert_eq!(
            read.screen(grant("2001:db8::7"), KEY_BEFORE, NOW, WINDOW),
            None
        );
        // Nothing changed, nothing written (the file may even go).
        fs::remove_file(&path).unwrap();
        Tombstones::load(path.clone()).0.save().unwrap();
        assert!(!path.exists());

        // A damaged file: the lines that read are kept, the rest said.
        fs::write(
            &path,
            "192.0.2.7 5-0\nrubbish\n300.1.1.1 5-0\n192.0.2.8 5-x\n",
        )
        .unwrap();
        let (read, why) = Tombstones::load(path.clone());
        assert_eq!(read.len(), 1);
        assert!(why.unwrap().contains("3 line(s)"));
        fs::write(&path, vec![b'#'; LONGEST_FILE as usize + 1]).unwrap();
        let (read, why) = Tombstones::load(path.clone());
        assert!(read.is_empty());
        assert!(why.unwrap().contains("not read"));
        fs::remove_dir_all(dir).unwrap();
    }
}
