//! The pin directory: one bpffs directory holding the gate's maps and one
//! link per attached interface, so the gate outlives the process that
//! attached it and every CLI command can find it.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use gate_common::map_names::{
    AYA_LOGS, BANS_V4, BANS_V6, EXEMPT_V4, EXEMPT_V6, GRANTS_V4, GRANTS_V6, IFACE_MACS, LOCAL_V4,
    LOCAL_V6, LOG_BUCKETS, SCOPE_V4, SCOPE_V6, SETTINGS, STATS,
};

use super::{
    bpffs::{self, is_bpffs},
    mode::AttachMode,
};

/// Every map of the gate, each pinned under its name: the shared maps,
/// then the grants and the bans.
pub const ALL_MAPS: [&str; 14] = [
    EXEMPT_V4, EXEMPT_V6, SETTINGS, STATS, AYA_LOGS, SCOPE_V4, SCOPE_V6, LOCAL_V4, LOCAL_V6,
    IFACE_MACS, GRANTS_V4, GRANTS_V6, BANS_V4, BANS_V6,
];
/// Maps of older builds that this one no longer has: a gate that still
/// pins one runs an older program, which `attach` replaces (and then
/// unpins these); the last detach removes them too.
pub(super) const RETIRED_MAPS: [&str; 1] = [LOG_BUCKETS];
/// Maps that go away with the last detach unless grants are kept.
pub(super) const SHARED_MAPS: &[&str] = ALL_MAPS.split_at(ALL_MAPS.len() - 4).0;
/// The grants and the bans: kept by `detach --keep-grants`, so that a
/// guesser is not let off by a re-attach.
pub(super) const KEPT_MAPS: &[&str] = ALL_MAPS.split_at(ALL_MAPS.len() - 4).1;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/smtp-gate";
/// How often [`PinDir::lock_within`] tries again.
pub const LOCK_RETRY: Duration = Duration::from_millis(100);
const LINK_PREFIX: &str = "link_";

#[derive(Clone, Debug)]
pub struct PinDir {
    path: PathBuf,
}

/// A link pinned for one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedLinkEntry {
    pub iface: String,
    pub mode: AttachMode,
    pub path: PathBuf,
}

impl PinDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `link_<mode>_<iface>`: modes have no underscore, so the name splits
    /// back unambiguously even for interface names that contain one.
    pub fn link(&self, iface: &str, mode: AttachMode) -> PathBuf {
        self.path
            .join(format!("{LINK_PREFIX}{}_{iface}", mode.pin_tag()))
    }

    pub fn links(&self) -> Result<Vec<PinnedLinkEntry>> {
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(LINK_PREFIX) else {
                continue;
            };
            let Some((tag, iface)) = rest.split_once('_') else {
                continue;
            };
            let Some(mode) = AttachMode::from_pin_tag(tag) else {
                continue;
            };
            links.push(PinnedLinkEntry {
                iface: iface.to_string(),
                mode,
                path: entry.path(),
            });
        }
        links.sort_by(|a, b| a.iface.cmp(&b.iface));
        Ok(links)
    }

    pub fn link_for(&self, iface: &str) -> Result<Option<PinnedLinkEntry>> {
        Ok(self.links()?.into_iter().find(|l| l.iface == iface))
    }

    /// Fails unless a gate's maps are pinned here.
    pub fn require_gate(&self) -> Result<()> {
        if !self.map(gate_common::map_names::SETTINGS).exists() {
            bail!(
                "nothing attached: no smtp-gate maps in {} (run `smtp-gate attach --iface IF` \
                 first, or pass the --pin-dir it used)",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Makes sure the directory exists on a bpffs that outlives this
    /// process. bpffs is not mounted at boot on every distribution; like
    /// `bpftool`, mount it where it is expected: on /sys/fs/bpf for the
    /// default location, or on the pin directory itself elsewhere. A bpffs
    /// that only this process's mount namespace would have is refused
    /// unless `allow_private` (see bpffs.rs).
    pub fn prepare(&self, allow_private: bool) -> Result<()> {
        let parent = self.path.parent().unwrap_or(Path::new("/"));
        if self.path.exists() && is_bpffs(&self.path)? {
            return self.check_lasting(&self.path, allow_private);
        }
        if parent.exists() && is_bpffs(parent)? {
            self.check_lasting(parent, allow_private)?;
            fs::create_dir_all(&self.path)
                .with_context(|| format!("creating pin directory {}", self.path.display()))?;
            return Ok(());
        }
        let mount_point = if parent == Path::new("/sys/fs/bpf") {
            parent.to_path_buf()
        } else {
            self.path.clone()
        };
        if !allow_private && bpffs::own_mounts_are_private() {
            bail!(
                "{} is not on a bpffs, and this process does not run in the host's mount \
                 namespace (as under `ip netns exec`, which gives a command a fresh /sys, or \
                 in a sandboxed service): a bpffs mounted on {} now would be private to this \
                 process, and the gate would vanish with it. Mount a bpffs in the host's mount \
                 namespace (e.g. `mount -t bpf bpf /run/smtp-gate`, outside `ip netns exec`) \
                 and pass `--pin-dir /run/smtp-gate/gate`, or pass --allow-private-bpffs if a \
                 gate that ends with this process is what you want",
                self.path.display(),
                mount_point.display()
            );
        }
        fs::create_dir_all(&mount_point)
            .with_context(|| format!("creating {}", mount_point.display()))?;
        bpffs::mount_bpffs(&mount_point)?;
        fs::create_dir_all(&self.path)
            .with_context(|| format!("creating pin directory {}", self.path.display()))?;
        Ok(())
    }

    /// Refuses a bpffs (holding `at`) that the host does not see, unless
    /// `allow_private`.
    fn check_lasting(&self, at: &Path, allow_private: bool) -> Result<()> {
        if allow_private || bpffs::bpffs_seen_by_host(at) != Some(false) {
            return Ok(());
        }
        bail!(
            "the bpffs holding {} is mounted only in this process's mount namespace, not in \
             the host's: pins there vanish with the last process of this namespace, and the \
             gate with them. Pass a --pin-dir on a bpffs mounted in the host's mount \
             namespace, or --allow-private-bpffs if that is what you want",
            self.path.display()
        )
    }

    /// Takes the pin directory's lock (flock), so that an `attach`, a
    /// `detach` and a daemon repairing the gate do not work on the same
    /// links at once. `None` if the directory does not exist.
    pub fn lock(&self) -> Result<Option<Flock<fs::File>>> {
        let dir = match fs::File::open(&self.path) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        Flock::lock(dir, FlockArg::LockExclusive)
            .map(Some)
            .map_err(|(_, errno)| anyhow::Error::new(errno))
            .with_context(|| format!("locking {}", self.path.display()))
    }

    /// [`PinDir::lock`], waiting for it at most `wait`: an error that says
    /// who holds it (when /proc/locks tells) if it is not let go by then.
    /// `waiting` runs while it waits, every [`LOCK_RETRY`], with how long it
    /// has waited.
    pub fn lock_within(
        &self,
        wait: Duration,
        mut waiting: impl FnMut(Duration),
    ) -> Result<Option<Flock<fs::File>>> {
        let started = Instant::now();
        loop {
            let dir = match fs::File::open(&self.path) {
                Ok(dir) => dir,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(e).with_context(|| format!("opening {}", self.path.display()))
                }
            };
            match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Some(lock)),
                Err((_, Errno::EWOULDBLOCK)) => {}
                Err((_, errno)) => {
                    return Err(anyhow::Error::new(errno))
                        .with_context(|| format!("locking {}", self.path.display()))
                }
            }
            let waited = started.elapsed();
            if waited >= wait {
                bail!(
                    "{} is locked by {} for more than {}: another smtp-gate command (attach, \
                     detach, exempt, settings) is at work there, or hangs",
                    self.path.display(),
                    self.lock_holders(),
                    humantime::format_duration(wait)
                );
            }
            waiting(waited);
            std::thread::sleep(LOCK_RETRY.min(wait - waited));
        }
    }

    /// Who holds the directory's lock, as /proc/locks tells (not in a
    /// sandbox with `ProcSubset=pid`): "pid 1234 (smtp-gate)", or "another
    /// process".
    pub fn lock_holders(&self) -> String {
        let holders = fs::metadata(&self.path)
            .ok()
            .and_then(|meta| {
                use std::os::unix::fs::MetadataExt;
                let locks = fs::read_to_string("/proc/locks").ok()?;
                Some(flock_holders(&locks, meta.dev(), meta.ino()))
            })
            .unwrap_or_default();
        if holders.is_empty() {
            return "another process".to_string();
        }
        holders
            .iter()
            .map(|pid| {
                let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                match name.trim() {
                    "" => format!("pid {pid}"),
                    name => format!("pid {pid} ({name})"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Removes the directory if nothing is left in it.
    pub fn remove_if_empty(&self) {
        let _ = fs::remove_dir(&self.path);
    }
}

/// The processes holding a flock on the file of device `dev` and inode
/// `ino`, from the text of /proc/locks (`1: FLOCK ADVISORY WRITE PID
/// MAJ:MIN:INODE 0 EOF`, the device's numbers in hex; waiters, marked
/// `->`, hold nothing).
fn flock_holders(locks: &str, dev: u64, ino: u64) -> Vec<u32> {
    let file = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "FLOCK", _, _, pid, at, ..] if *at == file => pid.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flock_holders_are_read_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 00:2a:77 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 5151 00:2a:77 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 6161 00:2a:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 7171 fd:01:77 0 EOF\n";
        let dev = nix::sys::stat::makedev(0, 0x2a);
        assert_eq!(flock_holders(locks, dev, 77), [4242]);
        assert_eq!(flock_holders(locks, dev, 78), Vec::<u32>::new());
    }

    /// Another holder keeps the lock: the wait ends after its bound with
    /// an error naming the holder (this process), having said meanwhile
    /// that it waits; let go, the lock is taken.
    #[test]
    fn a_lock_held_elsewhere_is_waited_for_within_a_bound() {
        let dir = std::env::temp_dir().join(format!("smtp-gate-pinlock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let pins = PinDir::new(&dir);
        let held = pins.lock().unwrap().expect("the directory exists");
        let started = Instant::now();
        let mut told = 0;
        let err = pins
            .lock_within(Duration::from_millis(350), |_| told += 1)
            .expect_err("the lock is held");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(350) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        assert!(told >= 2, "{told}");
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())) && text.contains("350ms"),
            "{text}"
        );
        drop(held);
        assert!(pins
            .lock_within(Duration::from_millis(350), |_| panic!("no wait"))
            .unwrap()
            .is_some());
        fs::remove_dir_all(&dir).unwrap();
        assert!(pins.lock_within(Duration::ZERO, |_| {}).unwrap().is_none());
    }
}
