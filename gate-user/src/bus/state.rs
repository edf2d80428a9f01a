//! The edge agent's files, in its state directory
//! (`bus_position_file`, default /var/lib/smtp-gate/bus-position):
//!
//! - the position: the id of the last stream entry applied, one line,
//!   so that a restart follows on from there; then the grant maps it was
//!   applied to (`grant-maps <boot id> <v4 map id> <v6 map id>`,
//!   map_identity.rs: a position holds for those maps only); and, while a
//!   full load from the keys is needed but not yet done, a last line
//!   `full-load-pending`, so that a load that failed half-way (or that a
//!   crash or a restart cut short) is done first whatever the position
//!   says by then. A position file without the maps' line, as older
//!   agents wrote it, reads as one applied to unknown maps (every grant
//!   is loaded from the keys first: the safe way); an older agent refuses
//!   a file of more lines than it knows and loads every grant, which is
//!   what it needs too;
//! - beside it, `<position file>.status.json`: what the agent is doing
//!   (connected, position, lag, last error, counts), rewritten every few
//!   seconds, read by `smtp-gate bus status`.
//!
//! Both are written whole and moved into place (a reader, or a crash,
//! never sees half of one); the position is synced to disk first.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{map_identity::MapIdentity, stream::StreamId};

/// Where the agent keeps its position by default.
pub const DEFAULT_POSITION_FILE: &str = "/var/lib/smtp-gate/bus-position";

/// The status file beside `position_file`.
pub fn status_file(position_file: &Path) -> PathBuf {
    let mut name = position_file.as_os_str().to_owned();
    name.push(".status.json");
    PathBuf::from(name)
}

/// What the position file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedPosition {
    /// The last entry applied.
    pub position: StreamId,
    /// A full load from the keys is needed and not yet done.
    pub load_pending: bool,
    /// The grant maps the position was applied to (`None`: not said).
    pub fed: Option<MapIdentity>,
}

/// The second line of a position file whose full load is pending.
const LOAD_PENDING: &[u8] = b"full-load-pending";

impl SavedPosition {
    /// A position without a pending load, applied to maps not named.
    pub fn at(position: StreamId) -> Self {
        Self {
            position,
            load_pending: false,
            fed: None,
        }
    }
}

/// The position in `path`: `None` if there is no file yet; an error if it
/// cannot be read or does not hold a position (the agent then loads
/// every grant from the keys, as without one).
pub fn read_position(path: &Path) -> Result<Option<SavedPosition>, String> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let body = text.strip_suffix(b"\n").unwrap_or(&text);
    let mut lines = body.split(|&b| b == b'\n');
    let position = lines.next().and_then(StreamId::parse);
    // The maps' line, then the pending load's, each one optional.
    let mut rest = lines.peekable();
    let fed = rest.next_if(|line| line.starts_with(b"grant-maps"));
    let fed = match fed {
        None => Some(None),
        Some(line) => MapIdentity::parse_line(line).map(Some),
    };
    let load_pending = rest.next_if(|line| *line == LOAD_PENDING).is_some();
    match (position, fed, rest.next()) {
        (Some(position), Some(fed), None) => Ok(Some(SavedPosition {
            position,
            load_pending,
            fed,
        })),
        _ => Err(format!(
            "{} holds no stream entry id (and perhaps the grant maps and \
             `full-load-pending`): `{}`",
            path.display(),
            String::from_utf8_lossy(&body[..body.len().min(64)]).escape_debug()
        )),
    }
}

/// Writes `saved` to `path` (and syncs it).
pub fn write_position(path: &Path, saved: SavedPosition) -> io::Result<()> {
    let mut text = format!("{}\n", saved.position).into_bytes();
    if let Some(fed) = saved.fed {
        text.extend_from_slice(fed.line().as_bytes());
        text.push(b'\n');
    }
    if saved.load_pending {
        text.extend_from_slice(LOAD_PENDING);
        text.push(b'\n');
    }
    write_whole(path, &text, true)
}

/// Writes `bytes` to a new file beside `path` and renames it over
/// `path`; with `sync`, the data and the rename reach the disk first.
pub fn write_whole(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?
        .to_owned();
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temp)?;
        file.write_all(bytes)?;
        if sync {
            file.sync_all()?;
        }
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    if sync {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What the agent writes to its status file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's process id.
    pub pid: u32,
    /// When it started and when it wrote this (wall clock, ms).
    pub started_ms: u64,
    pub updated_ms: u64,
    /// The engine (the URL without its password).
    pub bus: String,
    /// Connected to the engine now.
    pub connected: bool,
    /// The last entry applied.
    pub position: Option<String>,
    /// How far the position is behind the stream's last entry, in
    /// milliseconds of entry ids, as last seen (0: caught up; while reads
    /// come back full, the engine's time minus the position's).
    pub lag_ms: Option<u64>,
    /// The last error (the link's or the follower's), if any.
    pub last_error: Option<String>,
    /// Why a full load from the keys is needed, while it is not yet done
    /// (it is done before the stream is followed again, also after a
    /// restart).
    #[serde(default)]
    pub full_load_pending: Option<String>,
    /// Why the last full load that ended was made (since the agent
    /// started).
    #[serde(default)]
    pub last_full_load: Option<String>,
    /// The engine's clock minus this host's, in ms, as last read (grants
    /// are timed by the engine's: bus/clock.rs); `None` if the engine
    /// does not tell its time.
    #[serde(default)]
    pub clock_skew_ms: Option<i64>,
    /// Grants written to the map (from entries and keys).
    pub grants_applied: u64,
    /// Revokes applied (whether or not the map held the address).
    pub revokes_applied: u64,
    /// Grants that were over when read: nothing to do.
    pub expired_skipped: u64,
    /// Stream entries skipped as malformed.
    pub entries_rejected: u64,
    /// Grant keys skipped as malformed (full loads).
    pub keys_rejected: u64,
    /// Full loads from the keys.
    pub full_loads: u64,
    /// Grants of the map that no key held at a full load (revoked while
    /// the agent could not see it), taken away.
    pub dropped_without_key: u64,
    /// Map writes that failed (the entry is retried).
    pub apply_failures: u64,
    /// Grants (entries or keys) not applied: issued before a revoke this
    /// agent applied in the last window (bus/tombstones.rs).
    #[serde(default)]
    pub revoked_skipped: u64,
    /// The revokes remembered so (their addresses).
    #[serde(default)]
    pub revoke_tombstones: u64,
    /// Entry ids not taken as the engine's time: too far ahead
    /// (bus/clock.rs).
    #[serde(default)]
    pub ids_ahead_ignored: u64,
}

/// Writes `status` to `path` as JSON.
pub fn write_status(path: &Path, status: &AgentStatus) -> io::Result<()> {
    let mut json = serde_json::to_vec_pretty(status).map_err(io::Error::other)?;
    json.push(b'\n');
    write_whole(path, &json, false)
}

/// Reads the status file.
pub fn read_status(path: &Path) -> Result<AgentStatus, String> {
    let text = fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!(
            "{} does not exist: no agent has run with this position file",
            path.display()
        ),
        _ => format!("{}: {e}", path.display()),
    })?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl AgentStatus {
    /// The status as `smtp-gate bus status` prints it, at `now_ms`.
    pub fn render(&self, now_ms: u64) -> String {
        let ago = |ms: u64| format!("{:.1}s ago", now_ms.saturating_sub(ms) as f64 / 1000.0);
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        let mut lines = vec![
            format!(
                "agent          pid {}, started {}, status written {}",
                self.pid,
                ago(self.started_ms),
                ago(self.updated_ms)
            ),
            format!(
                "engine         {} ({})",
                self.bus,
                if self.connected {
                    "connected"
                } else {
                    "NOT CONNECTED"
                }
            ),
            format!("position       {}", or_none(&self.position)),
            format!(
                "lag            {}",
                self.lag_ms
                    .map_or_else(|| "unknown".into(), |ms| format!("{ms} ms"))
            ),
            format!("last error     {}", or_none(&self.last_error)),
            format!(
                "full load      {}",
                self.full_load_pending.as_ref().map_or_else(
                    || "none pending".into(),
                    |why| format!("PENDING ({why}): done before the stream is followed again")
                )
            ),
            format!("last full load {}", or_none(&self.last_full_load)),
            format!(
                "clock          {}",
                self.clock_skew_ms.map_or_else(
                    || "the engine's time is not known (TIME refused?)".into(),
                    |ms| format!(
                        "this host {} ms {} the engine",
                        ms.unsigned_abs(),
                        if ms > 0 { "behind" } else { "ahead of" }
                    )
                )
            ),
        ];
        for (name, count) in [
            ("grants applied", self.grants_applied),
            ("revokes applied", self.revokes_applied),
            ("expired skipped", self.expired_skipped),
            ("entries rejected", self.entries_rejected),
            ("keys rejected", self.keys_rejected),
            ("full loads", self.full_loads),
            ("dropped, no key", self.dropped_without_key),
            ("apply failures", self.apply_failures),
            ("revoked skipped", self.revoked_skipped),
            ("revokes kept", self.revoke_tombstones),
            ("ids ahead", self.ids_ahead_ignored),
        ] {
            lines.push(format!("{name:<16} {count}"));
        }
        if now_ms.saturating_sub(self.updated_ms) > STALE_AFTER_MS {
            lines.push(format!(
                "the status was written {}: is the agent running?",
                ago(self.updated_ms)
            ));
        }
        lines.join("\n")
    }
}

/// The agent rewrites its status at least every few seconds; one older
/// than this is from an agent that stopped or hangs.
pub const STALE_AFTER_MS: u64 = 30_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "smtp-gate-bus-state-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_position_reads_back_and_a_bad_file_is_an_error() {
        let dir = tempdir();
        let path = dir.join("bus-position");
        assert_eq!(read_position(&path), Ok(None), "no file yet");
        let id: StreamId = "1764546300000-7".parse().unwrap();
        write_position(&path, SavedPosition::at(id)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "1764546300000-7\n");
        assert_eq!(read_position(&path), Ok(Some(SavedPosition::at(id))));
        // Written over whole, and nothing left beside it.
        write_position(&path, SavedPosition::at(StreamId::ZERO)).unwrap();
        assert_eq!(
            read_position(&path),
            Ok(Some(SavedPosition::at(StreamId::ZERO)))
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        for bad in [
            "",
            "x\n",
            "5-\n",
            "5-1\n\n",
            &"9".repeat(10_000),
            "5-1\nfull-load\n",
            "5-1\nfull-load-pending\nmore\n",
            "full-load-pending\n",
        ] {
            fs::write(&path, bad).unwrap();
            let e = read_position(&path).unwrap_err();
            assert!(e.contains("holds no stream entry id"), "{e}");
            assert!(e.len() < 300, "{e}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_pending_full_load_is_kept_beside_the_position_and_the_old_format_reads() {
        let dir = tempdir();
        let path = dir.join("bus-position");
        let id: StreamId = "1764546300000-7".parse().unwrap();
        let pending = SavedPosition {
            position: id,
            load_pending: true,
            fed: None,
        };
        write_position(&path, pending).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "1764546300000-7\nfull-load-pending\n"
        );
        assert_eq!(read_position(&path), Ok(Some(pending)));
        // Done: the line goes.
        write_position(&path, SavedPosition::at(id)).unwrap();
        assert_eq!(read_position(&path), Ok(Some(SavedPosition::at(id))));
        // What agents wrote before: one line, with or without its end.
        for old in ["1764546300000-7\n", "1764546300000-7"] {
            fs::write(&path, old).unwrap();
            assert_eq!(read_position(&path), Ok(Some(SavedPosition::at(id))));
        }
        fs::write(&path, "1764546300000-7\nfull-load-pending").unwrap();
        assert_eq!(read_position(&path), Ok(Some(pending)));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_grant_maps_are_named_beside_the_position_and_an_old_file_names_none() {
        let dir = tempdir();
        let path = dir.join("bus-position");
        let id: StreamId = "1764546300000-7".parse().unwrap();
        let boot = "91d07573-7d3f-45ad-89ab-f7a67736d373";
        let maps = format!("grant-maps {boot} 41 42");
        let fed = MapIdentity::parse_line(maps.as_bytes());
        assert!(fed.is_some());
        let saved = SavedPosition {
            fed,
            ..SavedPosition::at(id)
        };
        write_position(&path, saved).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("1764546300000-7\n{maps}\n")
        );
        assert_eq!(read_position(&path), Ok(Some(saved)));
        // With a pending load: the maps' line first, the pending last.
        let pending = SavedPosition {
            load_pending: true,
            ..saved
        };
        write_position(&path, pending).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("1764546300000-7\n{maps}\nfull-load-pending\n")
        );
        assert_eq!(read_position(&path), Ok(Some(pending)));
        // Written by an older agent: no maps named, so the agent loads
        // every grant (agent/follower.rs, map_identity::why_load).
        for old in ["1764546300000-7\n", "1764546300000-7\nfull-load-pending\n"] {
            fs::write(&path, old).unwrap();
            let read = read_position(&path).unwrap().unwrap();
            assert_eq!((read.position, read.fed), (id, None), "{old:?}");
            assert_eq!(
                crate::bus::map_identity::why_load(read.fed, fed),
                Some(crate::bus::map_identity::UNNAMED)
            );
        }
        // A maps' line out of place, twice, or malformed: no position.
        for bad in [
            format!("1764546300000-7\nfull-load-pending\n{maps}\n"),
            format!("1764546300000-7\n{maps}\n{maps}\n"),
            format!("1764546300000-7\n{maps} 43\n"),
            "1764546300000-7\ngrant-maps\n".into(),
            format!("{maps}\n"),
        ] {
            fs::write(&path, &bad).unwrap();
            let e = read_position(&path).unwrap_err();
            assert!(e.contains("holds no stream entry id"), "{bad:?}: {e}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_status_reads_back_and_shows_its_age() {
        let dir = tempdir();
        let path = status_file(&dir.join("bus-position"));
        assert!(path.ends_with("bus-position.status.json"));
        assert!(read_status(&path).unwrap_err().contains("does not exist"));
        let status = AgentStatus {
            pid: 7,
            started_ms: 1_000,
            updated_ms: 5_000,
            bus: "redis://10.0.0.5:6379".into(),
            connected: true,
            position: Some("5-0".into()),
            lag_ms: Some(0),
            entries_rejected: 3,
            ..AgentStatus::default()
        };
        write_status(&path, &status).unwrap();
        assert_eq!(read_status(&path), Ok(status.clone()));
        let text = status.render(6_000);
        assert!(text.contains("position       5-0"), "{text}");
        assert!(text.contains("entries rejected 3"), "{text}");
        assert!(!text.contains("is the agent running"), "{text}");
        assert!(text.contains("full load      none pending"), "{text}");
        assert!(text.contains("last full load none"), "{text}");
        assert!(status.render(60_000).contains("is the agent running"));
        let pending = AgentStatus {
            full_load_pending: Some("the stream was trimmed past the position".into()),
            ..status.clone()
        };
        assert!(
            pending
                .render(6_000)
                .contains("full load      PENDING (the stream was trimmed past the position)"),
            "{}",
            pending.render(6_000)
        );
        let loaded = AgentStatus {
            last_full_load: Some("the gate's grant map is new".into()),
            ..status.clone()
        };
        assert!(loaded
            .render(6_000)
            .contains("last full load the gate's grant map is new"));
        // A status file written before the fields existed still reads.
        let mut old = serde_json::to_value(&status).unwrap();
        old.as_object_mut().unwrap().remove("full_load_pending");
        old.as_object_mut().unwrap().remove("last_full_load");
        fs::write(&path, old.to_string()).unwrap();
        assert_eq!(read_status(&path), Ok(status.clone()));
        fs::remove_dir_all(dir).unwrap();
    }
}
